"""One student run, any recipe: validate, resolve the config, train, write the run record."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .energy import EnergyMeter
from .errors import MtdError
from .plan import validate_selection
from .recipes import StudentContext, get_recipe
from .record import (device_description, load_done, make_run_id, provenance, record_path, utc_now,
                     write_record)
from .store import TeacherStore
from .teachers import find_teachers
from .train import fit, remove_checkpoint, resolve_device, seed_everything

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


def resolve_config(recipe, store: TeacherStore, overrides: dict[str, Any]) -> dict[str, Any]:
    """Recipe defaults, then task-specific defaults, then the user's overrides (unknown keys refused)."""
    config = dict(recipe.DEFAULTS)
    if hasattr(recipe, "defaults_for"):
        config.update(recipe.defaults_for(store))
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise MtdError(f"unknown setting {unknown[0]!r} for this student; valid: {', '.join(sorted(config))}")
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def prepare(req: RunRequest) -> tuple[Any, TeacherStore, dict[str, Any], str, Path]:
    """Every check that can fail, before anything is trained or written."""
    recipe = get_recipe(req.student)
    store = TeacherStore.open(req.store)
    if req.teachers:
        validate_selection(req.teachers, req.primary, store.num_teachers, recipe.NEEDS_PRIMARY)
    elif req.primary is not None:
        raise MtdError(f"--primary {req.primary} given for the CE-only baseline (--teachers none)")
    if req.online and not req.teachers_dir:
        raise MtdError("--online needs --teachers-dir (the teachers to run inside the loop)")
    config = resolve_config(recipe, store, req.overrides)
    identity = {"task": store.task, "student": req.student, "teachers": sorted(req.teachers),
                "primary": req.primary, "seed": req.seed, "online": req.online, "recipe": config}
    teachers_sha = store.attrs.get("teachers_sha256", [])
    run_id = make_run_id(identity, store.fingerprint, teachers_sha)
    return recipe, store, identity, run_id, record_path(req.out, store.task, req.student, run_id)


def run_student(req: RunRequest) -> dict[str, Any]:
    """Train one student (or return the finished record of the same run); returns the record."""
    recipe, store, identity, run_id, path = prepare(req)
    if not req.force and (done := load_done(path)) is not None:
        log.info("run %s is done already: %s", run_id[:12], path)
        return done
    ctx = make_context(req, store, identity["recipe"], path)
    device = ctx.device
    started = utc_now()
    seed_everything(req.seed)
    job = recipe.build(ctx)
    job.identity = {"run_id": run_id}
    with EnergyMeter() as meter:
        history = fit(job, device)
    final = history[-1]
    record = {
        "run_id": run_id, "task": store.task, "student": req.student, "teachers": sorted(req.teachers),
        "primary": req.primary, "k": len(req.teachers), "seed": req.seed, "metric_name": store.metric,
        "metric": float(final["metric"]), "wall_s": meter.reading.wall_s, "energy_j": meter.reading.energy_j,
        "energy_sources": meter.reading.sources, "device": device_description(device),
        "store_fingerprint": store.fingerprint, "teachers_sha256": list(store.attrs.get("teachers_sha256", [])),
        "config": identity, "store": str(Path(req.store).resolve()), "history": history, **ctx.extra,
        "started_utc": started, "finished_utc": utc_now(), "status": "done", **provenance(),
    }
    write_record(path, record)
    remove_checkpoint(job)
    log.info("run %s: %s %.4f -> %s", run_id[:12], store.metric, record["metric"], path)
    return record


def make_context(req: RunRequest, store: TeacherStore, config: dict[str, Any], record: Path | None) -> StudentContext:
    """The recipe's view of a request; ``record`` (the run record's path) places checkpoint and metrics."""
    return StudentContext(
        student=req.student, config=config, store=store, teachers=tuple(sorted(req.teachers)), primary=req.primary,
        seed=req.seed, device=resolve_device(req.device), data_dir=req.data_dir,
        online=_online_teachers(req, store) if req.online else None,
        checkpoint=record.with_suffix(".ckpt.pt") if record else None,
        metrics_csv=record.with_suffix(".metrics.csv") if record else None,
        work_dir=Path(req.out) / store.task / req.student)


def _online_teachers(req: RunRequest, store: TeacherStore) -> list:
    found = find_teachers(Path(req.teachers_dir), store.task)
    if len(found) != store.num_teachers:
        raise MtdError(f"--teachers-dir {req.teachers_dir} has {len(found)} teachers, the store {store.num_teachers}")
    want = store.attrs.get("teachers_sha256", [])
    for i, t in enumerate(found):
        if want and want[i] and want[i] != t.sha256:
            raise MtdError(f"teacher {i} in {t.path} is not the one the store was dumped from (sha256 differs)")
    return found
