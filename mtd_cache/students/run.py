"""One run, any kind: plan it (check, resolve, name), then run it or find it done, under a lock, with its record.

Kinds: ``student`` (k >= 1 teachers), ``baseline`` (the CE-only student, k = 0)
and the kinds a recipe adds (``RUN_KINDS``: TinyBERT's ``stage1``). Every kind goes through the same
machinery: ``plan_run`` checks the request against the store and resolves the recipe's settings
before anything is trained or written, and names the run (its id, record and lock); ``execute_run``
returns the finished record of the same run, or takes the run's lock, trains it (energy metered,
resumable per epoch) and commits its record atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..core.checkpoints import load_weights
from ..core.energy import EnergyMeter
from ..core.errors import MtdError
from ..core.fit import Fit, fit, remove_checkpoint, total_cost
from ..core.locks import file_lock
from ..core.runtime import device_description, provenance, resolve_device, seed_everything, utc_now
from ..core.safe_files import atomic_path, atomic_write_json, check_targets, read_text
from ..core.settings import Resolved
from ..models import factory
from ..store import TeacherStore
from ..store.seal import unsealed
from ..store.tokens import open_store
from ..tasks.registry import task_of_store
from ..teachers import Teacher
from .context import StudentContext
from .recipes import check_modality, get_recipe, needs_primary
from .recipes.settings import check_init_teacher
from .record import experiment_identity, load_done, make_experiment_id, make_run_id, record_path, write_record
from .selection import TeacherSelection, select
from .targets import TEACHER_DROPOUT_VERSION, online_teachers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """What a user (or a sweep) asks for; ``overrides`` are recipe hyper-parameters."""

    store: str
    student: str
    teachers: tuple[int, ...]  # () = the CE-only baseline (k = 0)
    primary: int | None = None
    seed: int = 0
    out: str = "runs"
    overrides: dict[str, Any] = field(default_factory=dict)
    online: bool = False
    teachers_dir: str | None = None
    data_dir: str | None = None
    device: str | None = None
    force: bool = False
    kind: str = "student"  # "student" (a baseline when teachers is empty), or a kind of the recipe's RUN_KINDS
    # the fingerprints of every store of the sweep this run belongs to (R repeat stores): its experiment's;
    # () = the run's own store alone. Never in the run id: the same run is the same run in any sweep.
    experiment_stores: tuple[str, ...] = ()
    # keep the student's final weights beside its record (``<run_id>.model.safetensors``); not in the run id
    save_model: bool = False
    # train on a store without a seal (its bytes unverifiable); recorded in ``store_integrity``, not in the run id
    allow_unverified: bool = False


@dataclass
class PlannedRun:
    """A request checked and named: everything known before training starts."""

    request: RunRequest
    recipe: ModuleType
    store: TeacherStore
    resolved: Resolved
    selection: TeacherSelection  # the chosen teachers, the primary, the KD rule and weights (``selection.select``)
    kind: str  # student | baseline | a recipe's run kind
    run_id: str
    identity: dict[str, Any]  # what the run id hashes (with the store's fingerprint and teachers' hashes)
    canonical_id: str  # the id of the same identity with every setting in its declared type (``alias_target``)
    experiment: dict[str, Any]  # what defines the comparison the run belongs to (``record.experiment_identity``)
    record: Path  # the run record; the run is done when it holds status "done" (``impl.done``)
    lock: Path
    checkpoint: Path | None = None
    metrics_csv: Path | None = None
    online: list[Teacher] | None = None
    impl: Any = None  # the kind's plan/done/build/commit: this module for students, else a RUN_KINDS module

    def context(self) -> StudentContext:
        req = self.request
        return StudentContext(
            student=req.student, settings=self.resolved.settings, requested=dict(self.resolved.requested),
            store=self.store, teachers=self.selection.teachers, primary=req.primary, seed=req.seed,
            selection=self.selection,
            device=resolve_device(req.device), data_dir=req.data_dir, online=self.online,
            checkpoint=self.checkpoint, metrics_csv=self.metrics_csv,
            work_dir=Path(req.out) / self.store.task / factory.slug(req.student), prerequisite=self._prerequisite)

    def done(self) -> dict[str, Any] | None:
        return self.impl.done(self)

    def _prerequisite(self, kind: str) -> dict[str, Any]:
        """Run or reuse the run of ``kind`` this one starts from (same primary and seed), waiting for its lock."""
        req = replace(self.request, kind=kind, teachers=(self.request.primary,), force=False)
        return execute_run(plan_run(req), wait=True)


def plan_run(req: RunRequest) -> PlannedRun:
    """Every check that can fail, before anything is trained or written; the run's id, record and lock."""
    recipe = get_recipe(req.student)
    store = open_store(req.store)
    if not (store.sealed or req.allow_unverified):
        raise unsealed(store.path)
    kind = _store_kind(store)
    if kind is not None:  # an imported store of a task mtd-cache does not know is refused by the recipe, later
        check_modality(req.student, recipe, kind, str(req.store))
    resolved = resolve_settings(recipe, store, req.overrides)
    # a stage 1 reads no teacher's logits: its selection takes no rule or weights (refused here, before any work)
    selection = select(req.teachers, req.primary, store.num_teachers,
                       resolved.settings if req.kind == "student" else None, needs_primary(recipe, resolved.settings))
    if getattr(resolved.settings, "teacher_dropout", False) and not req.online:
        raise MtdError("teacher_dropout=true needs --online: a store holds each teacher's one deterministic output "
                       "per input, dropout draws a new one every pass")
    if req.online and not req.teachers_dir:
        raise MtdError("--online needs --teachers-dir (the teachers to run inside the loop)")
    identity = {"task": store.task, "student": req.student, "teachers": sorted(req.teachers),
                "primary": req.primary, "seed": req.seed, "online": req.online, "recipe": resolved.requested}
    weights = factory.local_sha256(req.student)
    if weights is not None:  # a student checkpoint in a local folder: retrained there, a new run
        identity["student_sha256"] = weights
    if getattr(resolved.settings, "teacher_dropout", False):  # what dropout-on teachers compute changed: new runs
        identity["teacher_dropout_version"] = TEACHER_DROPOUT_VERSION
    run_id = make_run_id(identity, store.fingerprint, store.teachers_sha256)
    canonical_id = make_run_id({**identity, "recipe": resolved.canonical}, store.fingerprint, store.teachers_sha256)
    path = record_path(req.out, store.task, factory.slug(req.student), run_id)
    experiment = experiment_identity(store.task, req.student, resolved.canonical,
                                     req.experiment_stores or [store.fingerprint], store.teachers_sha256, req.online)
    planned = PlannedRun(request=req, recipe=recipe, store=store, resolved=resolved, selection=selection,
                         kind="student" if req.teachers else "baseline", run_id=run_id, identity=identity,
                         canonical_id=canonical_id, experiment=experiment,
                         record=path, lock=path.with_suffix(".lock"), checkpoint=path.with_suffix(".ckpt.safetensors"),
                         metrics_csv=path.with_suffix(".metrics.csv"),
                         online=online_teachers(store, req.teachers_dir) if req.online else None,
                         impl=_STUDENT)
    if req.kind == "student":
        return planned
    kinds = getattr(recipe, "RUN_KINDS", {})
    if req.kind not in kinds:
        raise MtdError(f"student {req.student!r} has no run kind {req.kind!r}; it has: student, {', '.join(kinds)}")
    return kinds[req.kind].plan(planned)


def _work(planned: PlannedRun, job: Fit) -> dict[str, int]:
    """What the run went through: training examples per epoch, epochs, and the teacher forwards an online run
    of it needs (one per teacher read per example per epoch: k for a student, the primary for a stage 1)."""
    n, k = int(planned.store.num_examples), len(planned.request.teachers)
    return {"train_examples": n, "epochs": int(job.epochs), "teacher_forwards": k * n * int(job.epochs)}


def _store_kind(store: TeacherStore) -> str | None:
    try:
        return task_of_store(store).kind
    except MtdError:
        return None


def resolve_settings(recipe: ModuleType, store: TeacherStore, overrides: dict[str, Any]) -> Resolved:
    """The recipe's settings for ``store``: its defaults, then what the store recorded (a text store's tokenizer
    and length fill settings whose default None means "the store's"), then the user's ``overrides``."""
    recorded = {"max_length": store.max_length, "tokenizer": (store.tokenizer or {}).get("name")}
    resolved = recipe.Settings.resolve(overrides, recorded=recorded)
    check_init_teacher(resolved.settings, store.num_teachers)
    return resolved


def run_student(req: RunRequest) -> dict[str, Any]:
    """Train one run (or return the finished record of the same run), waiting for another process running it."""
    return execute_run(plan_run(req), wait=True)


def execute_run(planned: PlannedRun, wait: bool = True,
                on_start: Callable[[], None] | None = None) -> dict[str, Any] | None:
    """The run's record: found done, or trained here under its lock; None when locked and ``wait`` is False.

    ``on_start`` is called once the lock is held and the run is about to train (a sweep's event log).
    """
    check_targets(planned.request.out, [planned.record, planned.lock, planned.checkpoint, planned.metrics_csv,
                                        planned.record.with_suffix(".predictions.npz"), model_path(planned.record)])
    force = planned.request.force
    if not force and (done := planned.done()) is not None:
        log.info("%s %s is done already: %s", planned.kind, planned.run_id[:12], planned.record)
        return {**done, "reused": True}
    with file_lock(planned.lock, wait) as held:
        if not held:
            return None  # another process runs it now
        if not force and (done := planned.done()) is not None:
            return {**done, "reused": True}
        if on_start is not None:
            on_start()
        return _train(planned)


def _train(planned: PlannedRun) -> dict[str, Any]:
    req = planned.request
    ctx = planned.context()
    started = utc_now()
    seed_everything(req.seed)
    job = planned.impl.build(planned, ctx)
    job.identity = {"run_id": planned.run_id} if planned.impl is _STUDENT else {f"{planned.kind}_id": planned.run_id}
    with EnergyMeter() as meter:
        history = fit(job, ctx.device, meter)
    cost = total_cost(job, meter.reading)  # every part of a resumed run
    part = {"wall_s_this_part": meter.reading.wall_s, "energy_sources": meter.reading.sources}
    return finish(planned, ctx, job, history, {**cost, **part, "engine": {"name": "single", "students": 1}},
                  started)


def finish(planned: PlannedRun, ctx: StudentContext, job: Fit, history: list[dict[str, float]],
           cost: dict[str, Any], started: str) -> dict[str, Any]:
    """A trained run's predictions, record (``cost``: its wall time, energy and engine) and weights, committed."""
    req = planned.request
    predictions = _write_predictions(planned, job)
    record = {
        "run_id": planned.run_id, "kind": planned.kind, "experiment": make_experiment_id(planned.experiment),
        "experiment_identity": planned.experiment, "predictions": predictions,
        "task": planned.store.task, "student": req.student,
        "teachers": sorted(req.teachers), "primary": req.primary, "k": len(req.teachers), "seed": req.seed,
        **(ctx.selection.record() if planned.impl is _STUDENT else {}), **_work(planned, job),
        "metric_name": planned.store.metric,
        "metric": float(history[-1]["metric"]) if "metric" in history[-1] else None,
        **cost, "device": device_description(ctx.device), "threads": torch.get_num_threads(),
        "store_fingerprint": planned.store.fingerprint, "teachers_sha256": planned.store.teachers_sha256,
        "store_integrity": "verified" if planned.store.sealed else "unverified (--allow-unverified)",
        "config": planned.identity, "store": str(Path(req.store).resolve()), "history": history, **ctx.extra,
        "started_utc": started, "finished_utc": utc_now(), "status": "done", **provenance(),
    }
    record = planned.impl.commit(planned, ctx, job, record)
    log.info("%s %s: %s %s -> %s", planned.kind, planned.run_id[:12], record["metric_name"], record["metric"],
             planned.record)
    return record


def _write_predictions(planned: PlannedRun, job: Fit) -> str | None:
    """The student's class ids on the evaluation set (and its labels), ``<run_id>.predictions.npz`` beside the
    record: what the report's confidence intervals resample. Returns the file's name, None without predictions."""
    if getattr(planned.store, "kind", None) == "lm" and job.predictions is not None:
        return _write_sequence_scores(planned, np.asarray(job.predictions))
    labels = job.prediction_labels if job.prediction_labels is not None else planned.store.dev_labels
    if job.predictions is None or labels is None:
        return None
    labels = np.asarray(labels)
    pred = np.asarray(job.predictions)
    if pred.shape != labels.shape:
        log.warning("%s: %d predictions for %d evaluation labels: not kept", planned.run_id[:12], len(pred),
                    len(labels))
        return None
    path = planned.record.with_suffix(".predictions.npz")
    small = np.int16 if max(int(labels.max(initial=0)), int(pred.max(initial=0))) < 2**15 else np.int64
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, pred=pred.astype(small), label=labels.astype(small))
    return path.name


def _write_sequence_scores(planned: PlannedRun, scores: np.ndarray) -> str:
    """A language-model student's dev scores per sequence, ``<run_id>.predictions.npz``: ``nll`` (the NLL summed
    over the sequence's predicted tokens), ``tokens`` (their count) and ``correct`` (its argmax's right ones),
    what the report resamples perplexity by sequence from (a ratio of sums)."""
    path = planned.record.with_suffix(".predictions.npz")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, nll=scores[0].astype(np.float64), tokens=scores[1].astype(np.int64),
                     correct=scores[2].astype(np.int64))
    return path.name


def model_path(record: Path) -> Path:
    """Where a run's student weights are kept: ``<run_id>.model.safetensors`` beside its record."""
    return Path(record).with_suffix(".model.safetensors")


def _save_model(model: torch.nn.Module, path: Path) -> str:
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(model, str(tmp))
    return path.name


def evaluate_run(run: str, out: str = "runs", data_dir: str | None = None, device: str | None = None,
                 allow_unverified: bool = False) -> dict[str, Any]:
    """A finished run's student evaluated again from its saved weights (``mtd-train --evaluate RUN_ID``): the
    run rebuilt from its record (store, student, teachers, settings), its weights loaded, the evaluation split
    scored. Returns ``{"run_id", "metric_name", "metric", "recorded_metric", ...}``."""
    record_file = find_record(run, out)
    try:
        rec = json.loads(read_text(record_file))
        missing = [k for k in ("run_id", "store", "student", "teachers", "primary", "seed") if k not in rec]
    except (ValueError, TypeError) as exc:
        raise MtdError(f"{record_file} is not a run record ({exc})") from None
    if missing or not isinstance(rec, dict):
        raise MtdError(f"{record_file} is not a run record (it lacks {(missing or ['its fields'])[0]!r})")
    weights = model_path(record_file)
    if not weights.exists():
        raise MtdError(f"run {rec['run_id'][:12]} kept no weights ({weights.name} is not beside its record): "
                       "train it with mtd-train (weights are kept unless --no-save-model) or a sweep with "
                       "--save-models")
    cfg = rec.get("config") or {}
    if cfg.get("online"):
        raise MtdError(f"run {rec['run_id'][:12]} ran its teachers online: rebuild it with mtd-train --online "
                       "--teachers-dir (its teachers' folder is not recorded)")
    req = RunRequest(store=rec["store"], student=rec["student"], teachers=tuple(rec["teachers"]),
                     primary=rec["primary"], seed=rec["seed"], out=out, overrides=dict(cfg.get("recipe") or {}),
                     data_dir=data_dir, device=device, allow_unverified=allow_unverified)
    planned = plan_run(req)
    if planned.run_id != rec["run_id"]:
        raise MtdError(f"run {rec['run_id'][:12]} rebuilt from its record has id {planned.run_id[:12]}: its store "
                       f"({rec['store']}) or teachers changed since it ran")
    ctx = planned.context()

    def done_only(kind: str) -> dict[str, Any]:  # a stage 1 that is gone is named, never trained here
        before = plan_run(replace(req, kind=kind, teachers=(req.primary,)))
        found = before.done()
        if found is None:
            raise MtdError(f"the {kind} run this student started from ({before.record}) is gone: train the run "
                           "again with mtd-train")
        return found

    ctx.prerequisite = done_only
    job = planned.impl.build(planned, ctx)
    load_weights(job.model, weights, device=str(ctx.device))
    metrics = dict(job.evaluate())
    metrics.pop("predictions", None), metrics.pop("labels", None)
    return {"run_id": rec["run_id"], "student": rec["student"], "metric_name": rec["metric_name"],
            "metric": float(metrics["metric"]), "recorded_metric": rec["metric"], "weights": str(weights)}


def find_record(run: str, out: str) -> Path:
    """The record of run ``run`` (its id, or a unique prefix of it) under ``out``."""
    hits = sorted(p for p in Path(out).rglob(f"{run}*.json") if "stage1" not in p.relative_to(out).parts)
    if len(hits) != 1:
        raise MtdError(f"--evaluate {run!r}: {len(hits)} run records under {out} start with it "
                       f"({'give more of the id' if hits else 'check --out'})")
    return hits[0]


class _StudentKind:
    """The student and baseline kinds: a record ``<out>/<task>/<student>/<run_id>.json``."""

    @staticmethod
    def done(planned: PlannedRun) -> dict[str, Any] | None:
        """The finished record of this run: under its own id, or under another spelling of the same settings
        (``temperature=4`` and ``4.0``): the canonical id's record, or the record its alias names."""
        found = load_done(planned.record)
        if found is not None:
            return found
        other = alias_target(planned)
        return load_done(planned.record.with_name(f"{other}.json")) if other else None

    @staticmethod
    def build(planned: PlannedRun, ctx: StudentContext) -> Fit:
        return planned.recipe.build(ctx)

    @staticmethod
    def commit(planned: PlannedRun, ctx: StudentContext, job: Fit, record: dict[str, Any]) -> dict[str, Any]:
        if planned.request.save_model:  # before the record: a record that names weights always has them
            record["model_file"] = _save_model(job.model, model_path(planned.record))
        record["canonical_id"] = planned.canonical_id
        write_record(planned.record, record)
        if planned.canonical_id != planned.run_id:  # found again by the canonical spelling of its settings
            atomic_write_json(alias_file(planned), {"run_id": planned.run_id})
        remove_checkpoint(job)
        return record


def alias_file(planned: PlannedRun) -> Path:
    """``<canonical_id>.alias`` beside the records: names the run trained under another spelling of the settings."""
    return planned.record.with_name(f"{planned.canonical_id}.alias")


def alias_target(planned: PlannedRun) -> str | None:
    """The run id a finished run of these settings has under another spelling: the canonical id itself when its
    record exists, else the one its alias file names."""
    if planned.canonical_id != planned.run_id and planned.record.with_name(f"{planned.canonical_id}.json").exists():
        return planned.canonical_id
    try:
        target = json.loads(alias_file(planned).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return target if isinstance(target, str) and target.isalnum() and target != planned.run_id else None


_STUDENT = _StudentKind()
