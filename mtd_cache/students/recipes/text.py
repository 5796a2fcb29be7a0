"""What the text students share: the store's inputs tokenised as the dump did, the vocabulary check, the evaluation,
and the whole of their training (``text_fit``): text KD and DistilBERT differ in their student alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ...core.errors import MtdError
from ...core.fit import Fit
from ...core.optim import optimizer_and_schedule
from ...core.runtime import autocast_dtype
from ...models import bert
from ...models.inference import evaluate_split
from ...tasks.registry import task_of_store
from ...tasks.text_data import Encoded, TaskInputs, epoch_batches, to_device
from .. import objective
from ..context import StudentContext
from ..data import store_inputs
from ..targets import make_targets


def text_inputs(ctx: StudentContext) -> tuple[Any, TaskInputs]:
    """The task tokenised as the store's inputs were, or refused (tokenizer / max length named)."""
    s = ctx.settings
    tok, inputs = store_inputs(ctx.store, s.tokenizer, s.max_length, ctx.data_dir)
    ctx.extra.update(tokenizer=bert.tokenizer_identity(tok), max_length=inputs.max_length)
    return tok, inputs


def check_vocabulary(net: torch.nn.Module, tok: Any) -> None:
    if net.config.vocab_size < len(tok):
        raise MtdError(f"the student's vocabulary has {net.config.vocab_size} entries, the tokenizer "
                       f"{len(tok)}: they do not belong together")


def text_evaluator(ctx: StudentContext, net: torch.nn.Module, dev_set: Encoded,
                   dtype: torch.dtype | None) -> Callable[[], dict[str, float]]:
    """The dev metrics of ``net`` (the primary one as ``metric``) and its predictions, as the recipe's ``evaluate``."""
    def evaluate() -> dict[str, Any]:
        metrics, logits = evaluate_split(task_of_store(ctx.store), net, dev_set, ctx.settings.eval_batch_size,
                                         ctx.device, dtype)
        return {**metrics, "predictions": logits.argmax(-1), "labels": dev_set.labels}
    return evaluate


class TextStudent(torch.nn.Module):
    """The classifier and, for a hidden-state term across widths, its projection ``W`` (trained, checkpointed)."""

    def __init__(self, net: torch.nn.Module, projection: torch.nn.Module | None):
        super().__init__()
        self.net = net
        self.projection = projection


def text_fit(ctx: StudentContext, net: torch.nn.Module, inputs: TaskInputs, desc: str, wrap: bool,
             project: bool) -> Fit:
    """The ``Fit`` of a text student (text KD, DistilBERT: they differ in their student alone): BERT's fine-tuning
    recipe, the loss of ``objective.Objective`` (CE, KD^k and the hidden-state terms the settings turn on), the
    store's or the online teachers' targets. ``wrap``: train a ``TextStudent`` (the keys text KD's saved weights
    have always had) even without a projection; ``project``: a hidden-state term across widths goes through a
    learnable W (text KD), else it is refused (DistilBERT: the reference's equal widths)."""
    s, device = ctx.settings, ctx.device
    dtype, precision = autocast_dtype(s.precision, device)
    train = inputs.train
    loss = objective.Objective.of(s, objective.KD(s, ctx.selection), teachers=bool(ctx.teachers))
    hidden = loss.needs(objective.HIDDEN)
    projection = last_layer_projection(ctx, net, project) if hidden else None
    model = (TextStudent(net, projection) if wrap or projection is not None else net).to(device)
    targets = make_targets(ctx, kd="kd" in loss.names, hidden_layers=(-1,) if hidden else ())
    steps = s.epochs * math.ceil(len(train) / s.batch_size)
    optimizer, scheduler = optimizer_and_schedule(model, s.lr, s.weight_decay, s.warmup, steps)
    project = projection if projection is not None else torch.nn.Identity()
    teachers = loss.needs("teacher")

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        out = net(**bert.model_inputs(net, b), output_hidden_states=hidden)
        student = objective.StudentOut(logits=out.logits, labels=b["labels"], mask=b["attention_mask"],
                                       hidden=out.hidden_states[-1] if hidden else None, project=project)
        return loss(student, targets(b, b, b["input_ids"].shape[1]) if teachers else None)

    ctx.extra.update(precision=precision, student_params=sum(p.numel() for p in net.parameters()),
                     teacher_source="online" if ctx.online else "store", loss_terms=loss.names)
    batches = epoch_batches(train, s.batch_size, ctx.seed, targets.fetch if teachers else None, depth=s.prefetch)
    return Fit(model=model, optimizer=optimizer, scheduler=scheduler, epochs=s.epochs, batches=batches,
               step=step, evaluate=text_evaluator(ctx, net, inputs.dev, dtype), eval_every=s.eval_every,
               checkpoint=ctx.checkpoint, metrics_csv=ctx.metrics_csv, desc=desc, autocast_dtype=dtype,
               grad_clip=s.grad_clip, state=loss.state)


def last_layer_projection(ctx: StudentContext, net: torch.nn.Module, allowed: bool) -> torch.nn.Module | None:
    """W (student width -> the primary's width) when they differ (refused unless ``allowed``), None when they are
    equal; the store must keep the primary's last layer (checked before any training)."""
    if ctx.primary is None:
        raise MtdError("a hidden-state loss needs a primary teacher (--primary): its states are the target")
    if not ctx.online:
        states, last = ctx.store.primary(ctx.primary), ctx.store.teacher_depth
        if last not in states.hidden_layers:
            raise MtdError(f"the store keeps layers {list(states.hidden_layers)} of primary {ctx.primary}, not its "
                           f"last ({last}): dump again with the default hidden_layers, or turn the hidden-state "
                           "loss off (alpha_hidden=0, alpha_cos=0)")
        width = states.hidden_size
    else:
        cfg = bert.load_config(ctx.online[ctx.primary].path)
        width = getattr(cfg, "hidden_size", None) or cfg.dim
    mine = bert.hidden_size(net)
    if mine != width and not allowed:
        raise MtdError(f"cosine loss needs equal widths: student hidden size {mine}, primary teacher {width} (use "
                       "init_from_teacher, or set alpha_cos=0)")
    ctx.extra["hidden_projection"] = None if mine == width else [mine, int(width)]
    return None if mine == width else torch.nn.Linear(mine, int(width))
