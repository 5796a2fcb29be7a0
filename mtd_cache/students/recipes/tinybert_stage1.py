"""TinyBERT's stage 1, a run kind of its own: intermediate-layer distillation (ILD) from the primary teacher alone.

    L_ILD = sum_{k=0..L_S} MSE(fit_dense(h_S^k), h_P^{g(k)}) + sum_{m=1..L_S} MSE(A_S^m, A_P^{g(m)})

(``tinybert`` has the references and the departures.) The stage-1 model depends only on what
stage 1 reads: the primary teacher, the training inputs (the store's fingerprint: data,
augmentation, tokenizer, length), the seed and the stage-1 recipe. Its id is the hash of those
(``identity``); its run record ``stage1.json`` and its model live in
``<out>/<task>/tinybert/stage1/<id>/``, written in ``<id>.partial/`` and renamed into place when
complete, so every subset sharing primary and seed reuses one stage 1, and a killed one resumes.
The run machinery (``students.run``) plans, locks, trains and reuses it like any other run, through
``KIND``: ``plan``, ``done``, ``build`` and ``commit``.

This module also holds what both stages need: the layer map, the student's initialisation, the data.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ...core.errors import MtdError
from ...core.fit import Fit, remove_checkpoint
from ...core.hashing import canonical_json, sha256_text
from ...core.optim import optimizer_and_schedule
from ...core.runtime import autocast_dtype
from ...core.safe_files import atomic_write_json, read_text
from ...core.state_losses import tinybert_layer_map
from ...models import bert
from ...models.tinybert import TinyBertStudent, from_general, from_teacher
from ...tasks.registry import task_of_store
from ...tasks.text_data import TaskInputs, epoch_batches, to_device
from .. import objective
from ..context import StudentContext
from ..record import STAGE1_RECORD
from ..targets import TEACHER_DROPOUT_VERSION, TeacherOutputs, make_targets, teacher_path
from .text import check_vocabulary, text_inputs

log = logging.getLogger(__name__)

STAGE1_VERSION = 1  # bump when stage-1 training changes: old stage-1 models are then not reused
RECORD = STAGE1_RECORD
STAGE1_KEYS = ("init", "init_from_teacher", "init_teacher", "student_layers", "layer_map", "ild_epochs", "ild_lr",
               "ild_schedule", "ild_mask", "task_epochs", "batch_size", "weight_decay", "grad_clip", "precision")
# settings added later: in the identity only when set (``since``), so earlier stage-1 ids stay valid
STAGE1_LATER_KEYS = ("clip_per_parameter", "teacher_dropout", "alpha_rep", "alpha_att")


# ----------------------------------------------------------------------------- the run kind


class _Stage1Kind:
    """How the run machinery plans, finds, builds and commits a stage-1 run."""

    @staticmethod
    def plan(planned: Any) -> Any:
        """The planned run renamed to stage 1: its id, record and lock under ``<work_dir>/stage1/``."""
        ctx = planned.context()
        _, _, ident, folder = location(ctx)
        partial = _partial(folder)
        return replace(planned, kind="stage1", run_id=folder.name, identity=ident, record=folder / RECORD,
                       lock=folder.parent / f"{folder.name}.lock", checkpoint=partial / "checkpoint.safetensors",
                       metrics_csv=partial / "metrics.csv", impl=KIND)

    @staticmethod
    def done(planned: Any) -> dict[str, Any] | None:
        return stage1_done(planned.record.parent)

    @staticmethod
    def build(planned: Any, ctx: StudentContext) -> Fit:
        return build_stage1(ctx, planned.run_id, planned.identity)

    @staticmethod
    def commit(planned: Any, ctx: StudentContext, job: Fit, record: dict[str, Any]) -> dict[str, Any]:
        """Save the model beside its record in ``<id>.partial/``, then rename the folder into place."""
        folder = planned.record.parent
        partial = _partial(folder)
        job.model.save(partial)
        remove_checkpoint(job)
        record.update(stage1_id=planned.run_id, identity=planned.identity, metric_name="ild_loss",
                      metric=float(record["history"][-1]["loss"]))
        atomic_write_json(partial / RECORD, record)
        if folder.exists():
            shutil.rmtree(folder)  # a torn earlier attempt (no stage1.json)
        partial.rename(folder)
        return record


KIND = _Stage1Kind()


def _partial(folder: Path) -> Path:
    return folder.parent / f"{folder.name}.partial"


def stage1_done(folder: Path) -> dict[str, Any] | None:
    """The record of a finished stage 1 in ``folder`` (with its model), else None."""
    try:
        rec = json.loads(read_text(folder / RECORD))
    except (OSError, ValueError):
        return None
    done = isinstance(rec, dict) and rec.get("status") == "done"
    return rec if done and (folder / "model.safetensors").exists() else None


def folder_of(ctx: StudentContext, info: dict[str, Any]) -> Path:
    """Where the stage-1 model of record ``info`` lives."""
    return Path(ctx.work_dir or ".") / "stage1" / info["stage1_id"]


def location(ctx: StudentContext) -> tuple[list[int], str, dict[str, Any], Path]:
    """(layer map, ILD source, stage-1 identity, its folder ``<work_dir>/stage1/<sha256 of the identity>``)."""
    gmap = layer_map(ctx)
    source = ild_source(ctx, gmap)
    ident = identity(ctx, gmap, source)
    return gmap, source, ident, Path(ctx.work_dir or ".") / "stage1" / sha256_text(canonical_json(ident))


def identity(ctx: StudentContext, gmap: list[int], source: str) -> dict[str, Any]:
    """Everything stage 1 reads: its hash is the stage-1 id (the inputs by the store's fingerprint)."""
    s, p = ctx.settings, ctx.primary
    shas = ctx.store.teachers_sha256
    init_teacher = s.init_teacher if s.init_teacher is not None else p
    return {"version": STAGE1_VERSION, "task": ctx.store.task, "inputs": ctx.store.fingerprint,
            "primary_sha256": shas[p] if shas else f"index {p}", "seed": ctx.seed, "layer_map": gmap,
            "ild_source": source,
            "init_teacher_sha256": shas[init_teacher] if s.init_from_teacher and shas else None,
            "max_length": int(s.max_length), "ild_epochs": ild_epochs(ctx),
            "precision": autocast_dtype(s.precision, ctx.device)[1],
            "recipe": {k: ctx.requested[k] for k in (*STAGE1_KEYS, *STAGE1_LATER_KEYS) if k in ctx.requested},
            **({"teacher_dropout_version": TEACHER_DROPOUT_VERSION} if s.teacher_dropout else {})}


def ild_epochs(ctx: StudentContext) -> int:
    """``ild_epochs``, or with ``task_epochs`` the task's own (a GLUE row's; a task file's task has none)."""
    own = getattr(task_of_store(ctx.store), "ild_epochs", None) if ctx.settings.task_epochs else None
    return own or ctx.settings.ild_epochs


def ild_source(ctx: StudentContext, gmap: list[int]) -> str:
    """"store" or "online": where stage 1 gets the primary's states (refused when neither can serve)."""
    s, p, path = ctx.settings, ctx.primary, ctx.store.path
    want = s.ild_source
    if p not in ctx.store.primaries:
        missing = f"{path} holds no states of primary {p}"
    else:
        states = ctx.store.primary(p)
        lacks = sorted({g for g in gmap if g not in states.hidden_layers} |
                       {g for g in gmap[1:] if g not in states.attn_layers})
        missing = f"{path} lacks layers {lacks} of primary {p} (layer map {gmap})" if lacks else None
    if s.ild_mask == "reference":
        if want == "store":
            raise MtdError("ild_mask=reference averages over padded tensors, which the store does not hold: "
                           "use ild_source=online (the primary run in the loop)")
        return "online"
    if want == "auto" and ctx.online:  # --online: every teacher in the loop, the primary's states included
        return "online"
    if want == "store" or (want == "auto" and missing is None):
        if missing is not None:
            raise MtdError(f"{missing}: dump with --primary {p} --student-layers {len(gmap) - 1}, "
                           "or use ild_source=online")
        return "store"
    return "online"


# ----------------------------------------------------------------------------- training


def build_stage1(ctx: StudentContext, sid: str, ident: dict[str, Any]) -> Fit:
    """The ``Fit`` of stage 1: the student initialised, the primary's mapped states as targets."""
    s, device = ctx.settings, ctx.device
    dtype, precision = autocast_dtype(s.precision, device)
    tok, inputs = data(ctx)
    gmap, source = ident["layer_map"], ident["ild_source"]
    fit_size, heads = primary_dims(ctx)
    net, init = init_student(ctx, tok, fit_size)
    net.to(device)
    if bert.num_heads(net.bert) != heads:
        raise MtdError(f"attention distillation needs equal head counts: student {bert.num_heads(net.bert)}, "
                       f"primary teacher {heads}")
    train = inputs.train
    pad_to = inputs.max_length if s.ild_mask == "reference" else None
    targets = make_targets(ctx, kd=False, hidden_layers=gmap, attn_layers=gmap[1:],
                           states_online=source == "online")
    epochs = ild_epochs(ctx)
    steps = epochs * math.ceil(len(train) / s.batch_size)
    optimizer, scheduler = optimizer_and_schedule(net, s.ild_lr, s.weight_decay, 0.0, steps, schedule=s.ild_schedule)
    masked = s.ild_mask == "valid"

    loss = objective.Objective.of(s, None, teachers=True, terms=("rep", "att"))

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        teacher = targets(b, b, b["input_ids"].shape[1])
        out = net(**bert.model_inputs(net, b), output_hidden_states=True, output_scores=True)
        return ild_loss(net, out, teacher.hidden, teacher.scores, b["attention_mask"] if masked else None, loss)

    batches = epoch_batches(train, s.batch_size, ctx.seed, targets.fetch, depth=s.prefetch, stream=1, pad_to=pad_to)
    ctx.extra.update(stage1_id=sid, layer_map=gmap, ild_source=source, precision=precision, **init)
    log.info("stage 1 %s: %d epochs of ILD from primary %d (%s states), layer map %s", sid[:12], epochs,
             ctx.primary, source, gmap)
    return Fit(model=net, optimizer=optimizer, scheduler=scheduler, epochs=epochs, batches=batches, step=step,
               checkpoint=ctx.checkpoint, metrics_csv=ctx.metrics_csv,
               desc=f"tinybert stage 1 primary {ctx.primary}", autocast_dtype=dtype, grad_clip=s.grad_clip,
               clip_per_parameter=s.clip_per_parameter)


def ild_loss(net: TinyBertStudent, out: Any, teacher_hidden: torch.Tensor, teacher_scores: torch.Tensor,
             mask: torch.Tensor | None, loss: objective.Objective | None = None) -> dict[str, torch.Tensor]:
    """TinyBERT's stage-1 loss: the objective's ``rep`` (hidden MSE through ``fit_dense`` over g(0..L_S)) and ``att``
    (attention MSE over g(1..L_S)) terms, weighted by the settings (1 and 1: the reference's sum).

    ``teacher_hidden`` (B, L_S+1, L, H) and ``teacher_scores`` (B, L_S, heads, L, L) are the primary's mapped
    layers; ``mask`` None averages over every entry (the reference), else over real tokens.
    """
    loss = loss or objective.Objective({"rep": 1.0, "att": 1.0}, None, teachers=True)
    student = objective.StudentOut(hidden_states=out.hidden_states, scores=out.scores, project=net.fit_dense,
                                   mask=mask)
    return loss(student, TeacherOutputs(hidden=teacher_hidden, scores=teacher_scores))


def primary_dims(ctx: StudentContext) -> tuple[int, int]:
    """The primary's (hidden size, attention heads): from its stored states, else its config (hash-checked)."""
    if ctx.primary in ctx.store.primaries:
        states = ctx.store.primary(ctx.primary)
        if states.num_heads:
            return states.hidden_size, states.num_heads
    config = bert.load_config(teacher_path(ctx, ctx.primary))
    return int(config.hidden_size), int(config.num_attention_heads)


# ----------------------------------------------------------------------------- both stages


def data(ctx: StudentContext) -> tuple[Any, TaskInputs]:
    tok, inputs = text_inputs(ctx)
    ctx.extra.update(augmented=inputs.augmented)
    return tok, inputs




def teacher_depth(ctx: StudentContext) -> int:
    depth = ctx.store.teacher_depth
    if depth is None:
        raise MtdError(f"{ctx.store.path} does not record its teachers' depth (dumped by an older mtd-cache)")
    return depth


def layer_map(ctx: StudentContext) -> list[int]:
    """g(0..L_S): the teacher hidden state each student hidden state distils (0 = embeddings)."""
    return tinybert_layer_map(teacher_depth(ctx), ctx.settings.student_layers, ctx.settings.layer_map)


def init_student(ctx: StudentContext, tok, fit_size: int | None) -> tuple[TinyBertStudent, dict[str, Any]]:
    """The untrained student: a general TinyBERT checkpoint, or layers g(1..L_S) of a teacher."""
    s = ctx.settings
    num_labels = ctx.store.num_classes
    if s.init_from_teacher:
        t = s.init_teacher if s.init_teacher is not None else (ctx.primary or 0)
        teacher = bert.load_classifier(teacher_path(ctx, t), num_labels, use_safetensors=True)
        layers = [g - 1 for g in layer_map(ctx)[1:]]  # student layer m starts as teacher layer g(m)
        net = from_teacher(teacher, layers, fit_size or bert.hidden_size(teacher))
        init = {"init": f"teacher {t}", "init_layers": layers}
    else:
        net, fit_loaded = from_general(s.init, num_labels, fit_size or 1)
        if bert.num_layers(net.bert) != s.student_layers:
            raise MtdError(f"init {s.init!r} has {bert.num_layers(net.bert)} layers, student_layers is "
                           f"{s.student_layers}: set student_layers={bert.num_layers(net.bert)}")
        init = {"init": s.init, "init_layers": None, "fit_dense_from_init": fit_loaded}
    check_vocabulary(net, tok)
    return net, init
