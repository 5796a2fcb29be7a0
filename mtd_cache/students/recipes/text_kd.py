"""Text KD: any Hugging Face sequence classifier (``--student hf:NAME_OR_PATH``) from the mean of k teachers' logits.

Loss per batch (DESIGN.md "Losses"; Hinton et al. 2015):

    L = alpha_ce * CE(z_S, y) + alpha_kd * L_KD^k(z_S, mean_i z_Ti; t) [+ alpha_hidden * L_hid(W h_S, h_P)]

* ``L_KD^k``: ``losses.kd_loss`` ("kl", "sum_t2": HF distiller.py's ``KLDivLoss(batchmean) * T**2``).
* ``L_hid`` (off by default, ``alpha_hidden`` > 0 turns it on and makes ``--primary`` required): the student's
  last hidden state against the primary teacher's last one, stored in the store, on non-padding tokens:
  TinyBERT's MSE (``hidden_loss`` "mse") or DistilBERT's 1 - cosine ("cosine"). When the widths differ a
  learnable linear map ``W`` (student width -> teacher width, TinyBERT's ``fit_dense``) trains with the
  student; at equal widths ``W`` is the identity.
* The CE-only baseline (no teachers) trains with ``alpha_ce * CE`` alone.

The student is the checkpoint as named (its head initialised for the task's labels when it has none), or a
shallower cut of it: ``student_layers`` keeps evenly spaced layers, first and last included (DistilBERT's
extract_distilbert.py choice). It must tokenise as the store's inputs were tokenised (refused otherwise): the
targets belong to those tokens. The optimiser is BERT's fine-tuning recipe (AdamW, linear warm-up and decay).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import MtdError
from ...losses import cosine_hidden_loss, hard_ce, hidden_mse
from ...models import bert, factory
from ...optim import optimizer_and_schedule
from ...runtime import autocast_dtype
from ...settings import setting
from ...tasks.registry import task_of_store
from ...tasks.text_data import epoch_batches, to_device
from ...train import Fit
from ..context import StudentContext
from ..targets import make_targets
from .common import TextStudentSettings, check_vocabulary, kd_term, text_evaluator, text_inputs

log = logging.getLogger(__name__)
MODALITY = "text"
HIDDEN_LOSSES = ("mse", "cosine")


@dataclass(frozen=True)
class Settings(TextStudentSettings):
    """BERT's fine-tuning recipe (HF run_glue README, TinyBERT task_distill.py) with Hinton's KD."""

    alpha_hidden: float = setting(0.0, "hidden-state loss on the primary's last layer: off by default", low=0)
    hidden_loss: str = setting("mse", "mse: TinyBERT's (through W when the widths differ); cosine: DistilBERT's",
                               choices=HIDDEN_LOSSES)
    student_layers: int | None = setting(None, "None: every layer of the checkpoint; N: N evenly spaced ones, "
                                               "first and last included", low=1)


def needs_primary(settings: Settings) -> bool:
    """Only the hidden-state loss reads a primary teacher's states."""
    return settings.alpha_hidden > 0


class TextStudent(torch.nn.Module):
    """The classifier and, for the hidden-state loss across widths, its projection ``W`` (trained, checkpointed)."""

    def __init__(self, net: torch.nn.Module, projection: torch.nn.Module | None):
        super().__init__()
        self.net = net
        self.projection = projection


def build(ctx: StudentContext) -> Fit:
    """Model, optimiser, batches and loss of one text-KD run."""
    s, device = ctx.settings, ctx.device
    dtype, precision = autocast_dtype(s.precision, device)
    tok, inputs = text_inputs(ctx)
    train = inputs.train
    net = _student(ctx, tok)
    use_kd = bool(ctx.teachers) and s.alpha_kd > 0
    use_hidden = bool(ctx.teachers) and s.alpha_hidden > 0
    projection = _projection(ctx, net) if use_hidden else None
    model = TextStudent(net, projection).to(device)
    targets = make_targets(ctx, kd=use_kd, hidden_layers=(-1,) if use_hidden else ())
    kd = kd_term(ctx)
    steps = s.epochs * math.ceil(len(train) / s.batch_size)
    optimizer, scheduler = optimizer_and_schedule(model, s.lr, s.weight_decay, s.warmup, steps)
    project = projection if projection is not None else torch.nn.Identity()
    hidden_term = hidden_mse if s.hidden_loss == "mse" else cosine_hidden_loss

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        out = net(**bert.model_inputs(net, b), output_hidden_states=use_hidden)
        ce = hard_ce(out.logits, b["labels"])
        terms, loss = {"ce": ce}, s.alpha_ce * ce
        if use_kd or use_hidden:
            teacher = targets(b, b, b["input_ids"].shape[1])
            if use_kd:
                terms["kd"] = kd(out.logits, teacher.logits)
                loss = loss + s.alpha_kd * terms["kd"]
            if use_hidden:
                terms["hidden"] = hidden_term(project(out.hidden_states[-1]), teacher.hidden[:, 0],
                                              b["attention_mask"])
                loss = loss + s.alpha_hidden * terms["hidden"]
        return {"loss": loss, **terms}

    ctx.extra.update(precision=precision, student_params=sum(p.numel() for p in net.parameters()),
                     teacher_source="online" if ctx.online else "store",
                     hidden_loss=s.hidden_loss if use_hidden else None,
                     loss_terms=["ce"] + ["kd"] * use_kd + ["hidden"] * use_hidden)
    batches = epoch_batches(train, s.batch_size, ctx.seed, targets.fetch if (use_kd or use_hidden) else None,
                            depth=s.prefetch)
    return Fit(model=model, optimizer=optimizer, scheduler=scheduler, epochs=s.epochs, batches=batches,
               step=step, evaluate=text_evaluator(ctx, net, inputs.dev, dtype), eval_every=s.eval_every,
               checkpoint=ctx.checkpoint, metrics_csv=ctx.metrics_csv,
               desc=f"{factory.slug(ctx.student)} k={len(ctx.teachers)}", autocast_dtype=dtype,
               grad_clip=s.grad_clip)


def _student(ctx: StudentContext, tok: Any) -> torch.nn.Module:
    s, store = ctx.settings, ctx.store
    net = factory.build(ctx.student, task_of_store(store), hint="give a local folder: --student hf:PATH")
    depth = bert.num_layers(net)
    layers = None
    if s.student_layers is not None and s.student_layers != depth:
        if s.student_layers > depth:
            raise MtdError(f"student_layers {s.student_layers}: {ctx.student} has only {depth} layers")
        layers = bert.evenly_spaced_layers(depth, s.student_layers)
        bert.keep_layers(net, layers)
    _check_tokenizer(ctx, tok)
    check_vocabulary(net, tok)
    ctx.extra.update(init=ctx.student, init_layers=layers, init_depth=depth)
    return net


def _check_tokenizer(ctx: StudentContext, tok: Any) -> None:
    """A checkpoint that comes with a tokenizer must tokenise as the store's inputs were (its ids index its
    embeddings); one without is held to the vocabulary size only."""
    ref = factory.hf_ref(ctx.student)
    try:
        own = bert.load_tokenizer(ref)
    except MtdError:
        log.info("%s has no tokenizer of its own: it reads the store's (%s)", ctx.student, tok.name_or_path)
        return
    mine, theirs = bert.tokenizer_identity(own), bert.tokenizer_identity(tok)
    if mine["sha256"] != theirs["sha256"]:
        raise MtdError(f"tokenizer mismatch: the student {ctx.student} tokenises with its own tokenizer (sha256 "
                       f"{mine['sha256'][:12]}), the store's inputs with {theirs['name']!r} (sha256 "
                       f"{theirs['sha256'][:12]}): distil a student of the teachers' tokenizer")


def _projection(ctx: StudentContext, net: torch.nn.Module) -> torch.nn.Module | None:
    """W (student width -> the primary's width) when they differ, None when they are equal; the store must keep
    the primary's last layer (checked before any training)."""
    if not ctx.online:
        states, last = ctx.store.primary(ctx.primary), ctx.store.teacher_depth
        if last not in states.hidden_layers:
            raise MtdError(f"the store keeps layers {list(states.hidden_layers)} of primary {ctx.primary}, not its "
                           f"last ({last}): dump again with the default hidden_layers, or set alpha_hidden=0")
        width = states.hidden_size
    else:
        cfg = bert.load_config(ctx.online[ctx.primary].path)
        width = getattr(cfg, "hidden_size", None) or cfg.dim
    mine = bert.hidden_size(net)
    ctx.extra["hidden_projection"] = None if mine == width else [mine, int(width)]
    return None if mine == width else torch.nn.Linear(mine, int(width))
