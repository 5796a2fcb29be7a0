"""What a sweep's remaining runs will cost, from the plan's own configuration.

Per job kind (students, CE-only baselines, TinyBERT's stage 1), seconds per example and epoch from, in order:

1. **measured**: finished runs in the output folder of the same task, student and kind whose recipe differs at
   most in its epochs (the median of ``wall_s / (train_examples x epochs)``), scaled by this plan's examples
   and epochs;
2. **calibrated** (dry runs only): a few timed training steps of the kind's first job, built exactly as it
   will run (model, data, targets), times its steps per epoch and epochs;
3. otherwise no estimate, in one line (the store or the model is not there yet).

With ``save_models`` it adds the disk the students' weights will take.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.progress import duration
from ..models import factory
from ..students.record import load_done
from .plan import Job, first_overrides

log = logging.getLogger(__name__)
CALIBRATION_STEPS = 3
KIND_NAMES = {"student": "students", "baseline": "CE-only", "stage1": "stage-1"}


def estimate_lines(todo: list[Job], cfg: Any, workers: int, request: Callable[[Job], Any] | None = None,
                   save_models: bool = False) -> list[str]:
    """One line per job kind to run (count, seconds each, and where that figure comes from), then the total.

    ``request`` (a job's ``RunRequest``) turns the calibration on: a dry run's."""
    if not todo:
        return ["nothing to run"]
    lines, total, known = [], 0.0, True
    model_bytes = None
    for kind in ("stage1", "baseline", "student"):
        jobs = [j for j in todo if j.kind == kind]
        if not jobs:
            continue
        each, how, size = _per_run(jobs[0], cfg, request)
        model_bytes = model_bytes or size
        if each is None:
            known = False
            lines.append(f"{len(jobs)} {KIND_NAMES[kind]}: no estimate ({how})")
            continue
        total += each * len(jobs)
        lines.append(f"{len(jobs)} {KIND_NAMES[kind]} x ~{duration(each)} ({how}) = {duration(each * len(jobs))}")
    if known:
        lines.append(f"total ~{duration(total)} of runs, ~{duration(total / max(workers, 1))} on {workers} "
                     f"worker(s)")
    if save_models:
        students = sum(j.kind != "stage1" for j in todo)
        if model_bytes:
            lines.append(f"--save-models: {students} x {_size(model_bytes)} = {_size(model_bytes * students)} of "
                         "student weights")
        else:
            lines.append("--save-models: the weights' size is unknown until one run is done or calibrated")
    return lines


def _per_run(job: Job, cfg: Any, request: Callable[[Job], Any] | None) -> tuple[float | None, str, int | None]:
    """(seconds per run, how it was found, bytes of the student's weights if known)."""
    from ..store.tokens import open_store

    store_path = Path(cfg.stores[job.store_index])
    if not store_path.exists():
        return None, f"{store_path} is not there yet", None
    with open_store(store_path) as store:
        examples, task = int(store.num_examples), store.task
    epochs = _epochs(job, cfg)
    rate = _measured_rate(job, cfg, task)
    if rate is not None:
        per_ex, n, size = rate
        return per_ex * examples * epochs, f"measured: {n} finished runs, scaled to {examples} x {epochs} epochs", \
            size
    if request is None:
        return None, "no finished runs of this configuration yet (--dry-run calibrates)", None
    from ..students.recipes import student_traits

    if job.kind == "student" and student_traits(cfg.student, first_overrides(cfg))[1]:
        # a two-stage student builds on its stage 1: time the same model's CE-only steps instead
        job = Job(kind="baseline", teachers=(), primary=None, repeat=job.repeat, seed=job.seed,
                  store_index=job.store_index)
    try:
        return _calibrated(request(job), examples, epochs)
    except Exception as exc:  # a model that cannot load here, a store without its data: say so, go on
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"calibration failed: {first[:160]}", None


def _epochs(job: Job, cfg: Any) -> int:
    from ..students.recipes import get_recipe

    s = get_recipe(cfg.student).Settings.resolve(first_overrides(cfg)).settings
    return int(getattr(s, "ild_epochs", None) or s.epochs) if job.kind == "stage1" else int(s.epochs)


def _comparable(requested: dict[str, Any]) -> str:
    import json

    return json.dumps({k: v for k, v in (requested or {}).items() if k not in ("epochs", "ild_epochs")},
                      sort_keys=True)


def _measured_rate(job: Job, cfg: Any, task: str | None = None) -> tuple[float, int, int | None] | None:
    """Median seconds per example-epoch of finished runs of the same task, student, kind and settings."""
    from ..students.recipes import get_recipe

    want = _comparable(get_recipe(cfg.student).Settings.resolve(first_overrides(cfg)).requested)
    online = cfg.teachers_dir is not None
    rates, size = [], None
    folder = Path(cfg.out)
    pattern = f"*/{factory.slug(cfg.student)}/**/*.json"
    for path in folder.glob(pattern) if folder.exists() else ():
        rec = load_done(path)
        kind = rec.get("kind") if rec else None
        if rec is None or kind != job.kind or not rec.get("train_examples") or not rec.get("epochs"):
            continue
        config = rec.get("config") or rec.get("identity") or {}
        if bool(config.get("online")) != online or (task and rec.get("task") != task):
            continue  # teachers run in the loop cost more; another task is another model and data
        recipe = config.get("recipe")
        if recipe is not None and job.kind != "stage1" and _comparable(recipe) != want:
            continue
        rates.append(rec["wall_s"] / (rec["train_examples"] * rec["epochs"]))
        model = path.with_suffix(".model.safetensors")
        size = size or (model.stat().st_size if model.exists() else None)
    return (statistics.median(rates), len(rates), size) if rates else None


def _calibrated(req: Any, examples: int, epochs: int) -> tuple[float, str, int]:
    """A few timed steps of the job as it will run: seconds per run = per step x steps per epoch x epochs."""
    import torch

    from ..core.fit import Accumulated
    from ..students.run import plan_run

    planned = plan_run(req)
    ctx = planned.context()
    fit = planned.impl.build(planned, ctx)
    batches = fit.batches(0)
    steps = len(batches) if hasattr(batches, "__len__") else math.ceil(examples / ctx.settings.batch_size)
    it = iter(batches)
    times = []
    fit.model.train()
    for i in range(CALIBRATION_STEPS + 1):  # the first is a warm-up
        try:
            batch = next(it)
        except StopIteration:
            break
        t0 = time.perf_counter()
        fit.optimizer.zero_grad(set_to_none=True)
        parts = batch.parts if isinstance(batch, Accumulated) else (batch,)  # gradient accumulation, as fit runs it
        for part in parts:
            with torch.autocast(ctx.device.type, dtype=fit.autocast_dtype or torch.float32,
                                enabled=fit.autocast_dtype is not None):  # as train.fit runs it (bf16 on a GPU)
                loss = fit.step(part)["loss"]
            (loss / len(parts)).backward()
        fit.optimizer.step()
        if i:
            times.append(time.perf_counter() - t0)
    per_step = statistics.median(times) if times else float("nan")
    size = sum(p.numel() * p.element_size() for p in fit.model.parameters())
    del fit
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return per_step * steps * epochs, (f"calibrated: {len(times)} steps of {per_step:.3g} s x {steps} steps x "
                                       f"{epochs} epochs"), size


def _size(n: int | None) -> str:
    from ..core.progress import human_bytes

    return "unknown" if not n else human_bytes(n)
