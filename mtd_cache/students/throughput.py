"""One teacher inference, re-measured as an online student pays it: the rate the report prices the online axis at.

The dump times its own chunks (``store.merge.forward_cost``: their median), but under whatever load the
machine had, at the dump's batch size, and with every view of an image at once. ``measure_forward`` times
what an ``--online`` student's step adds instead: one teacher's forward on a training batch shaped as the
student's (default: 128 random (image, view) pairs for images, 32 examples for text: each recipe's batch),
warm, every teacher of the store in turn, on the store's own inputs (refused unless they fingerprint to the
store's), and writes the median with its quartiles to the store's sidecar (``store.sidecar``), which the
report then prefers and names. Building the batch (the views, the padding) is the student's own work either
way, so it is not timed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.energy import EnergyMeter
from ..core.errors import MtdError
from ..core.runtime import heap_allocations, resolve_device, utc_now
from ..models import bert, factory
from ..store import TeacherStore, write_forward_sidecar
from ..tasks.registry import task_of_store
from ..tasks.text_data import collate, to_device
from ..teachers.folders import find_teachers, load_teacher
from .data import store_inputs, store_train_images

log = logging.getLogger(__name__)

STUDENT_BATCH = {"image": 128, "text": 32}  # the recipes' training batches (image KD, text KD)


WARMUP_S = 1.5  # untimed forwards per teacher: a CPU takes a second or two to reach its steady rate


def measure_forward(store_path: str | os.PathLike, teachers_dir: str | None = None, batch: int | None = None,
                    batches: int = 64, warmup_s: float = WARMUP_S, device: str | None = None,
                    data_dir: str | None = None) -> dict[str, Any]:
    """Time ``batches`` teacher forwards of a ``batch``-example training batch, the store's teachers in turn, each
    after ``warmup_s`` seconds (and at least 3 forwards) untimed; write and return the measurement (seconds per
    example: median and quartiles over the batches)."""
    store = TeacherStore.open(store_path)
    task = task_of_store(store)
    teachers = _teachers(store, teachers_dir)
    dev = resolve_device(device)
    heap_allocations()  # as inside the student's loop, whose backward passes set the allocator so
    size = batch or STUDENT_BATCH[task.kind]
    inputs = _batches(store, task.kind, size, dev, data_dir)
    rates = []
    with EnergyMeter() as meter:
        for i, teacher in enumerate(teachers):
            model = factory.load_trained(teacher.path, teacher.info, store.num_classes).to(dev).eval()
            own = batches // len(teachers) + (i < batches % len(teachers))
            warm_until, warm = time.perf_counter() + warmup_s, 0
            while warm < 3 or time.perf_counter() < warm_until:
                _forward(model, next(inputs), task.kind, dev)
                warm += 1
            rates += [_forward(model, next(inputs), task.kind, dev) / size for _ in range(own)]
            del model
    q25, q50, q75 = (float(q) for q in np.quantile(rates, [0.25, 0.5, 0.75]))
    joules = meter.reading.energy_j / (size * len(rates)) if meter.reading.energy_j and rates else None
    measured = {"teacher_forward_s": q50, "teacher_forward_s_q25": q25, "teacher_forward_s_q75": q75,
                "teacher_forward_j": joules, "batches": len(rates), "batch_items": size,
                "teachers": len(teachers), "device": str(dev), "threads": torch.get_num_threads(),
                "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "measured_utc": utc_now(), "dump_rate_s": store.teacher_forward_s}
    path = write_forward_sidecar(store_path, store.fingerprint, measured)
    log.info("%s: one teacher inference %.4g ms per example (quartiles %.4g-%.4g, %d batches of %d): %s",
             store_path, 1e3 * q50, 1e3 * q25, 1e3 * q75, len(rates), size, path)
    return {**measured, "file": str(path)}


def _forward(model: torch.nn.Module, x: Any, kind: str, dev: torch.device) -> float:
    """Seconds of one teacher forward on a batch, as ``students.targets.OnlineTargets`` runs it."""
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x) if kind == "image" else model(**bert.model_inputs(model, x))
    _sync(dev)
    return time.perf_counter() - t0


def _batches(store: TeacherStore, kind: str, size: int, dev: torch.device, data_dir: str | None):
    """Training batches shaped as a student's, forever: random (image, view) pairs rendered, or examples collated."""
    rng = np.random.default_rng(0)
    if kind == "image":
        train = store_train_images(store, data_dir, dev)
        views = torch.as_tensor(store.views, device=dev)
        while True:
            idx = torch.as_tensor(rng.integers(0, len(train), size), device=dev)
            yield train.batch(idx, views[torch.as_tensor(rng.integers(0, len(views), size), device=dev)])
    _, inputs = store_inputs(store, data_dir=data_dir)
    while True:
        yield to_device(collate(inputs.train, rng.integers(0, len(inputs.train), size)), dev)


def _teachers(store: TeacherStore, teachers_dir: str | None) -> list[Any]:
    """The store's teachers, from ``teachers_dir`` or where the dump found them, each checked by its hash."""
    found = find_teachers(Path(teachers_dir)) if teachers_dir else \
        [t for p in store.teacher_paths if (t := load_teacher(Path(p))) is not None]
    want = store.teachers_sha256
    if [t.sha256 for t in found] != want or not found:
        where = teachers_dir or "the folders the store records"
        raise MtdError(f"{where}: not the teachers of {store.path} (their weights' hashes differ, or some are "
                       "gone): give --teachers-dir with the folder they were trained into")
    return found


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
