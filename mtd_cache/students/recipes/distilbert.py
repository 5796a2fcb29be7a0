"""DistilBERT students: CE + KD^k from the mean of k teachers' logits + cosine to the primary's last layer.

Loss per batch (DESIGN.md "Losses"; Sanh et al. 2019, task-specific variant):

    L = alpha_ce * CE(z_S, y) + alpha_kd * L_KD^k(z_S, mean_i z_Ti; t) + alpha_cos * L_cos(h_S, h_P)

* ``L_KD^k``: ``losses.kd_loss`` with divergence "kl" and scale "sum_t2", as HF
  distiller.py: ``KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) * T**2``
  (batchmean there is over tokens of the MLM; here over examples).
* ``L_cos``: ``losses.cosine_hidden_loss``: mean over non-padding tokens of
  1 - cos(student last hidden state, primary teacher's last hidden state) —
  distiller.py's ``CosineEmbeddingLoss`` on ``masked_select``-ed states. The
  primary's states come from the store (fp16, unpadded, padded on the device by
  ``ragged.pad_hidden``) or, with ``--online``, from the primary run in the loop.
* The CE-only baseline (no teachers) trains with ``alpha_ce * CE`` alone.

The student is a DistilBERT architecture in both initialisations: a DistilBERT
checkpoint (``init``, default distilbert-base-uncased), or with
``init_from_teacher`` the teacher's embeddings and evenly spaced layers mapped
onto DistilBERT as extract_distilbert.py does (``models.bert.distilbert_from_bert``).
One architecture keeps the two inits comparable (same parameters, no segment
embedding, same head), and is the student the paper distils.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import MtdError
from ...losses import cosine_hidden_loss, hard_ce
from ...models import bert
from ...optim import optimizer_and_schedule
from ...runtime import autocast_dtype
from ...settings import setting
from ...tasks.text_data import epoch_batches, to_device
from ...train import Fit
from ..context import StudentContext
from ..targets import make_targets, teacher_path
from .common import TextStudentSettings, check_vocabulary, kd_term, text_evaluator, text_inputs

MODALITY = "text"
NEEDS_PRIMARY = True


@dataclass(frozen=True)
class Settings(TextStudentSettings):
    """DistilBERT's task-specific distillation (Sanh et al. 2019; HF distillation project), BERT's fine-tuning."""

    alpha_cos: float = setting(1.0, "cosine loss on the primary's last hidden state", low=0)
    init: str = setting("distilbert-base-uncased", "student checkpoint: Hub name or folder (Sanh et al. 2019)")
    init_from_teacher: bool = setting(False, "instead: teacher embeddings + evenly spaced layers "
                                             "(extract_distilbert.py)")
    init_teacher: int | None = setting(None, "which teacher to cut: None = the primary (teacher 0 for the CE-only "
                                             "baseline)", low=0)
    student_layers: int = setting(6, "DistilBERT's depth; with init_from_teacher 12 -> 6 takes 0,2,4,7,9,11", low=1)
    fold_token_type: bool = setting(True, "init_from_teacher: add the segment-0 embedding into positions")


def build(ctx: StudentContext) -> Fit:
    """Model, optimiser, batches and loss of one DistilBERT student run."""
    s, device = ctx.settings, ctx.device
    dtype, precision = autocast_dtype(s.precision, device)
    tok, inputs = text_inputs(ctx)
    train = inputs.train
    net = _student(ctx, tok).to(device)
    use_kd = bool(ctx.teachers) and s.alpha_kd > 0
    use_cos = bool(ctx.teachers) and s.alpha_cos > 0
    if use_cos and ctx.primary is None:
        raise MtdError("alpha_cos > 0 needs a primary teacher (--primary)")
    if use_cos and not ctx.online:
        _check_last_layer(ctx, net)
    targets = make_targets(ctx, kd=use_kd, hidden_layers=(-1,) if use_cos else ())
    kd = kd_term(ctx)
    steps = s.epochs * math.ceil(len(train) / s.batch_size)
    optimizer, scheduler = optimizer_and_schedule(net, s.lr, s.weight_decay, s.warmup, steps)

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        out = net(**bert.model_inputs(net, b), output_hidden_states=use_cos)
        ce = hard_ce(out.logits, b["labels"])
        terms, loss = {"ce": ce}, s.alpha_ce * ce
        if use_kd or use_cos:
            teacher = targets(b, b, b["input_ids"].shape[1])
            if use_kd:
                terms["kd"] = kd(out.logits, teacher.logits)
                loss = loss + s.alpha_kd * terms["kd"]
            if use_cos:
                terms["cos"] = cosine_hidden_loss(out.hidden_states[-1], teacher.hidden[:, 0], b["attention_mask"])
                loss = loss + s.alpha_cos * terms["cos"]
        return {"loss": loss, **terms}

    ctx.extra.update(precision=precision, student_params=sum(p.numel() for p in net.parameters()),
                     teacher_source="online" if ctx.online else "store",
                     loss_terms=["ce"] + ["kd"] * use_kd + ["cos"] * use_cos)
    batches = epoch_batches(train, s.batch_size, ctx.seed, targets.fetch if (use_kd or use_cos) else None,
                            depth=s.prefetch)
    return Fit(model=net, optimizer=optimizer, scheduler=scheduler, epochs=s.epochs, batches=batches,
               step=step, evaluate=text_evaluator(ctx, net, inputs.dev, dtype), eval_every=s.eval_every,
               checkpoint=ctx.checkpoint, metrics_csv=ctx.metrics_csv, desc=f"distilbert k={len(ctx.teachers)}",
               autocast_dtype=dtype, grad_clip=s.grad_clip)


# ----------------------------------------------------------------------------- the student


def _student(ctx: StudentContext, tok) -> torch.nn.Module:
    s, task = ctx.settings, ctx.store
    if s.init_from_teacher:
        t = s.init_teacher if s.init_teacher is not None else (ctx.primary or 0)
        teacher = bert.load_classifier(teacher_path(ctx, t), task.num_classes, use_safetensors=True)
        layers = bert.evenly_spaced_layers(bert.num_layers(teacher), s.student_layers)
        net = bert.distilbert_from_bert(teacher, layers, s.fold_token_type)
        ctx.extra.update(init=f"teacher {t}", init_layers=layers, init_teacher_layers=bert.num_layers(teacher))
    else:
        net = bert.load_classifier(s.init, task.num_classes, task.label_names,
                                   hint="give a local folder (--set init=PATH), or start from the teachers' "
                                        "layers (--init-from-teacher)")
        if bert.num_layers(net) != s.student_layers:
            raise MtdError(f"init {s.init!r} has {bert.num_layers(net)} layers, student_layers is "
                           f"{s.student_layers}: set student_layers={bert.num_layers(net)} or init_from_teacher")
        ctx.extra.update(init=s.init, init_layers=None)
    check_vocabulary(net, tok)
    return net


def _check_last_layer(ctx: StudentContext, net: torch.nn.Module) -> None:
    """The store must keep the primary's last layer, at the student's width."""
    states, last = ctx.store.primary(ctx.primary), ctx.store.teacher_depth
    if last not in states.hidden_layers:
        raise MtdError(f"the store keeps layers {list(states.hidden_layers)} of primary {ctx.primary}, not its last "
                       f"({last}): dump again with the default hidden_layers, or set alpha_cos=0")
    if states.hidden_size != bert.hidden_size(net):
        raise MtdError(f"cosine loss needs equal widths: student hidden size {bert.hidden_size(net)}, primary "
                       f"teacher {states.hidden_size} (use init_from_teacher, or set alpha_cos=0)")


def layer_choice(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers ``init_from_teacher`` copies (re-exported for the record and tests)."""
    return bert.evenly_spaced_layers(teacher_layers, student_layers)
