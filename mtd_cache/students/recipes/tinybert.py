"""TinyBERT students: stage 1 distils the primary's intermediate layers, stage 2 the k teachers' averaged logits.

Reference: huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py and README (Jiao et al. 2020).

Stage 1, intermediate-layer distillation (ILD) from the primary teacher alone:

    L_ILD = sum_{k=0..L_S} MSE(fit_dense(h_S^k), h_P^{g(k)}) + sum_{m=1..L_S} MSE(A_S^m, A_P^{g(m)})

with one shared projection ``fit_dense`` (student width -> teacher width), the
embedding output as layer 0, pre-softmax attention scores with entries <= -100
zeroed in both models, and g(k) = k * L_T / L_S (``state_losses.tinybert_layer_map``).
AdamW at a constant lr 5e-5 (BertAdam's schedule "none"), 10 epochs, batch 32.

Stage 2, prediction-layer distillation (PLD): soft cross-entropy between
softmax(mean_i z^{T_i} / t) and the student at t = 1, averaged over batch and
classes, no t^2 (the reference's ``soft_cross_entropy``; ``kd_scale="mean"``),
no hard-label term; AdamW lr 3e-5, 10% linear warm-up then linear decay, 3 epochs.

The stage-1 model depends only on what stage 1 reads: the primary teacher, the
training inputs (the store's fingerprint: data, augmentation, tokenizer, length),
the seed and the stage-1 recipe. It is keyed by a hash of those
(``tinybert_stage1.identity``), kept under ``<out>/<task>/tinybert/stage1/<id>/`` and
reused by every subset that shares them: a sweep trains T*R stage-1 models, not
one per (subset, primary, repeat). Stage 1 is a run kind of its own (``RUN_KINDS``):
a sweep's stage-1 jobs and a stage-2 run's prerequisite go through the same run
machinery (``students.run``) as every other run.

Departures from the reference, each named (and recorded in the run):
- ``ild_mask="valid"`` (the default, and the only choice with cached states):
  the MSEs average over real tokens (attention: pairs of real tokens). The
  reference pads every batch to the maximum length and averages over every entry,
  pad positions included; the unpadded store holds real tokens only. With the
  primary computed online (``ild_source=online``), ``ild_mask="reference"``
  reproduces the reference's padded loss exactly.
- The reported score is the final model's; the reference keeps the stage-2
  checkpoint that scores best on dev (every 100 steps), which selects on the
  evaluation set. ``select_on_dev=True`` reproduces that, and the record says so.
- The reference's per-task stage-1 epochs (CoLA 50, MRPC 20, SST-2 10, ...) never
  took effect (``args.num_train_epoch`` misspelt); ``task_epochs=True`` applies them.
- AdamW with bias correction instead of BertAdam (none); the last partial batch is
  trained on (the reference skips it); batches are length-bucketed, not padded to 128.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...core.fit import Fit
from ...core.losses import KD_DIVERGENCES, KD_SCALES
from ...core.optim import optimizer_and_schedule
from ...core.runtime import PRECISIONS, autocast_dtype, seed_everything
from ...core.safe_files import atomic_write_json, read_text
from ...core.settings import LayerList, setting
from ...models import bert
from ...models.tinybert import DEFAULT_INIT, TinyBertStudent
from ...tasks.text_data import epoch_batches, to_device
from .. import objective
from ..context import StudentContext
from ..targets import make_targets
from . import tinybert_stage1
from .settings import StudentSettings
from .text import text_evaluator

MODALITY = "text"
NEEDS_PRIMARY = True
RUN_KINDS = {"stage1": tinybert_stage1.KIND}


WEIGHTS = objective.weights("TinyBERT", reads={objective.LOGITS, objective.LAYERS}, own={
    "kd": (1.0, "weight of the prediction-layer loss"),
    "ce": (0.0, "the reference has no hard-label term (the CE-only baseline uses CE alone)"),
    "rep": (1.0, "stage 1: hidden-state MSE over the layer map (the reference weighs it 1)", objective.ADDED_SINCE),
    "att": (1.0, "stage 1: attention-score MSE over the layer map (the reference weighs it 1)",
            objective.ADDED_SINCE)})
STAGE2 = ("ce", "kd")  # the terms of each stage
STAGE1 = ("rep", "att")


@dataclass(frozen=True)
class Settings(WEIGHTS, StudentSettings):
    """TinyBERT's task distillation as its README runs it (huawei-noah task_distill.py)."""

    # the student
    init: str = setting(DEFAULT_INIT, "general TinyBERT checkpoint (Hub name or folder); README: General_TinyBERT")
    init_from_teacher: bool = setting(False, "instead: the teacher's embeddings and its layers g(1..L_S)")
    init_teacher: int | None = setting(None, "which teacher to cut: None = the primary (teacher 0 for the CE-only "
                                             "baseline)", low=0)
    student_layers: int = setting(4, "TinyBERT-4L; must match the init checkpoint's depth", low=1)
    layer_map: LayerList | None = setting(None, "g(0..L_S) when L_T is not a multiple of L_S (e.g. 0,2,5,8)")
    # stage 1 (ILD)
    ild_epochs: int = setting(10, "README step 1: --num_train_epochs 10", low=1)
    ild_lr: float = setting(5e-5, "README step 1 passes no --learning_rate: the default 5e-5", above=0)
    ild_schedule: str = setting("constant", "task_distill.py: schedule 'none' unless --pred_distill",
                                choices=("constant", "linear"))
    ild_source: str = setting("auto", "primary states from the store when it has them, else the primary online",
                              choices=("auto", "store", "online"))
    ild_mask: str = setting("valid", "reference: pad to max_length, average over every entry (online primary only)",
                            choices=("valid", "reference"))
    task_epochs: bool = setting(False, "stage-1 epochs from the reference's per-task table (a typo disabled it there)")
    # stage 2 (PLD)
    epochs: int = setting(3, "README step 2: --num_train_epochs 3 (stage 2's epochs)", low=1)
    lr: float = setting(3e-5, "README step 2: --learning_rate 3e-5", above=0)
    warmup: float = setting(0.1, "--warmup_proportion 0.1, linear", low=0, high=1)
    temperature: float = setting(1.0, "task_distill.py --temperature default 1", above=0)
    kd_scale: str = setting("mean", "soft_cross_entropy: (-p * log q).mean() over batch and classes, no t^2",
                            choices=KD_SCALES)
    divergence: str = setting("ce", "soft cross-entropy", choices=KD_DIVERGENCES)
    select_on_dev: bool = setting(False, "the reference: keep the best dev checkpoint, evaluated every eval_step steps")
    eval_step: int = setting(100, "README step 2: --eval_step 100", low=1)
    # both stages
    batch_size: int = setting(32, "README: --train_batch_size 32", low=1)
    weight_decay: float = setting(0.01, "BertAdam groups: 0.01, none on bias/LayerNorm", low=0)
    grad_clip: float = setting(1.0, "BertAdam max_grad_norm (0: none)", low=0)
    clip_per_parameter: bool = setting(False, "BertAdam clips each parameter's gradient on its own; ours one "
                                              "global norm (HF Trainer's)", since="0.2")
    tokenizer: str | None = setting(None, "None: the store's")
    max_length: int | None = setting(None, "None: the store's (a dump-time choice; README 128)", low=2)
    precision: str = setting("auto", "bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    eval_batch_size: int = setting(128, "dev inference batch", low=1)
    eval_every: int = setting(1, "dev metrics every N epochs (0: after the last only)", low=0)
    prefetch: int = setting(3, "batches read from the store ahead, in a thread", low=0)


# ----------------------------------------------------------------------------- stage 2


def build(ctx: StudentContext) -> Fit:
    """Stage 1 (trained, or reused when done already), then the stage-2 ``Fit`` of one TinyBERT run."""
    s, device = ctx.settings, ctx.device
    dtype, precision = autocast_dtype(s.precision, device)
    tok, inputs = tinybert_stage1.data(ctx)
    if ctx.teachers:
        info = ctx.prerequisite("stage1")
        folder = tinybert_stage1.folder_of(ctx, info)
        net = TinyBertStudent.load(folder)
        ctx.extra.update(stage1_id=info["stage1_id"], stage1_reused=bool(info.get("reused")),
                         stage1_wall_s=info["wall_s"], stage1_energy_j=info["energy_j"], stage1_dir=str(folder),
                         stage1_teacher_forwards=info.get("teacher_forwards"),
                         ild_source=info["ild_source"], ild_mask=s.ild_mask, layer_map=info["layer_map"],
                         init=info["init"], init_layers=info["init_layers"])
    else:  # the CE-only baseline: no primary, no stage 1
        net, init = tinybert_stage1.init_student(ctx, tok, None)
        ctx.extra.update(stage1_id=None, **init)
    seed_everything(ctx.seed)  # stage 2 draws the same whether stage 1 was trained just now or reused
    net.to(device)
    train = inputs.train
    loss = objective.Objective.of(s, objective.KD(s, ctx.selection), bool(ctx.teachers), baseline={"ce": 1.0},
                                  terms=STAGE2)
    use_kd = "kd" in loss.names
    targets = make_targets(ctx, kd=True) if use_kd else None
    total = s.epochs * math.ceil(len(train) / s.batch_size)
    optimizer, scheduler = optimizer_and_schedule(net, s.lr, s.weight_decay, s.warmup, total)

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        out = objective.StudentOut(logits=net(**bert.model_inputs(net, b)).logits, labels=b["labels"])
        return loss(out, targets(b, b) if use_kd else None)

    dev_metric = text_evaluator(ctx, net, inputs.dev, dtype)
    on_step, evaluate = _selection(ctx, net, dev_metric, total) if s.select_on_dev else (None, dev_metric)
    ctx.extra.update(precision=precision, student_params=sum(p.numel() for p in net.parameters()),
                     teacher_source="online" if ctx.online else "store", select_on_dev=s.select_on_dev,
                     loss_terms=loss.names)
    batches = epoch_batches(train, s.batch_size, ctx.seed, targets.fetch if use_kd else None, depth=s.prefetch)
    return Fit(model=net, optimizer=optimizer, scheduler=scheduler, epochs=s.epochs, batches=batches,
               step=step, evaluate=evaluate, eval_every=s.eval_every, checkpoint=ctx.checkpoint,
               metrics_csv=ctx.metrics_csv, desc=f"tinybert k={len(ctx.teachers)}", autocast_dtype=dtype,
               grad_clip=s.grad_clip, clip_per_parameter=s.clip_per_parameter, on_step=on_step, state=loss.state)


def _selection(ctx: StudentContext, net: TinyBertStudent, dev_metric: Callable[[], dict[str, Any]],
               total: int) -> tuple[Callable[[int], None], Callable[[], dict[str, Any]]]:
    """``--select-on-dev``: dev score every ``eval_step`` steps and at the last; report the best (the reference).

    The best so far (its score, step and predictions) is kept beside the run's checkpoint, so a resumed run
    still knows it; the run's predictions are the selected model's.
    """
    every = ctx.settings.eval_step
    path = ctx.checkpoint.with_suffix(".best.json") if ctx.checkpoint else None
    best: dict[str, Any] = {"metric": -math.inf, "step": None, "predictions": None}
    if path is not None and path.exists():
        best.update(json.loads(read_text(path)))

    def on_step(step: int) -> None:
        if step % every and step != total:
            return
        now = dev_metric()
        net.train()
        if now["metric"] > best["metric"]:  # strict, as the reference's ``result['acc'] > best_dev_acc``
            best.update(metric=now["metric"], step=step, predictions=np.asarray(now["predictions"]).tolist())
            if path is not None:
                atomic_write_json(path, best)

    def evaluate() -> dict[str, Any]:
        now = dev_metric()
        if best["step"] is None:
            return {**now, "final_metric": now["metric"], "selected_step": None}
        return {**now, "final_metric": now["metric"], "metric": best["metric"], "selected_step": best["step"],
                "predictions": np.asarray(best["predictions"])}

    return on_step, evaluate
