"""One teacher inference, re-measured: the rate the report prices the online-equivalent cost at.

The dump times its own chunks (``store.merge.forward_cost``: their median), but under whatever load the
machine had, at the dump's batch size, and with every view of an image at once. ``measure_forward`` times
it again when asked, warm, at a student's batch (default: 128 (example, view) items for images, 32 examples
for text, each recipe's training batch), over every teacher of the store in turn, on the store's own inputs
(the plan's fingerprint must equal the store's), and writes the median with its quartiles to the store's
sidecar (``store.sidecar``), which the report then prefers and names.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..energy import EnergyMeter
from ..errors import MtdError
from ..record import utc_now
from ..runtime import resolve_device
from ..store import TeacherStore, write_forward_sidecar
from ..store.format import EXTRA_AUGMENTED
from ..tasks.registry import task_of_store
from .folders import find_teachers, load_teacher
from .modalities import modality

log = logging.getLogger(__name__)

STUDENT_BATCH = {"image": 128, "text": 32}  # the recipes' training batches (image KD, text KD)


def measure_forward(store_path: str | os.PathLike, teachers_dir: str | None = None, batch: int | None = None,
                    batches: int = 24, warmup: int = 2, device: str | None = None) -> dict[str, Any]:
    """Time ``batches`` teacher forwards of ``batch`` items (after ``warmup`` untimed ones per teacher), the
    store's teachers in turn; write and return the measurement (seconds per item: median and quartiles)."""
    store = TeacherStore.open(store_path)
    task = task_of_store(store)
    teachers = _teachers(store, teachers_dir)
    adapter = modality(task)
    options = _dump_options(store, adapter)
    views = max(1, store.num_views)
    size = batch or STUDENT_BATCH[task.kind]
    per_call = max(1, size // views)  # examples per forward: all their views at once
    plan = adapter.dump_plan(task, teachers, [], {**options, "batch_size": per_call * views}, device)
    if plan.spec.fingerprint != store.fingerprint:
        raise MtdError(f"{store_path}: its inputs could not be rebuilt here (fingerprint {plan.spec.fingerprint[:12]}, "
                       f"the store's {store.fingerprint[:12]}): give --data-dir as the dump had it")
    rates, items_timed, start = [], 0, 0
    n = store.num_examples
    with EnergyMeter() as meter:
        for i, teacher in enumerate(teachers):
            model = plan.load(teacher)
            own = batches // len(teachers) + (i < batches % len(teachers))
            for call in range(warmup + own):
                a = start % max(1, n - per_call + 1)
                b = min(n, a + per_call)
                start += per_call
                _sync(model)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    plan.forward(model, a, b, None, lambda _: None)
                _sync(model)
                if call >= warmup:
                    rates.append((time.perf_counter() - t0) / ((b - a) * views))
                    items_timed += (b - a) * views
            del model
    q25, q50, q75 = (float(q) for q in np.quantile(rates, [0.25, 0.5, 0.75]))
    joules = meter.reading.energy_j / items_timed if meter.reading.energy_j and items_timed else None
    measured = {"teacher_forward_s": q50, "teacher_forward_s_q25": q25, "teacher_forward_s_q75": q75,
                "teacher_forward_j": joules, "batches": len(rates), "batch_items": per_call * views,
                "teachers": len(teachers), "device": str(resolve_device(device)), "threads": torch.get_num_threads(),
                "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "measured_utc": utc_now(), "dump_rate_s": store.teacher_forward_s}
    path = write_forward_sidecar(store_path, store.fingerprint, measured)
    log.info("%s: one teacher inference %.4g ms per item (quartiles %.4g-%.4g, %d batches of %d): %s",
             store_path, 1e3 * q50, 1e3 * q25, 1e3 * q75, len(rates), per_call * views, path)
    return {**measured, "file": str(path)}


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


def _dump_options(store: TeacherStore, adapter: Any) -> dict[str, Any]:
    """The dump settings that rebuild the store's inputs (what its spec recorded)."""
    keys = set(adapter.DUMP_SETTINGS.keys())
    out = {k: v for k, v in store.spec.extra.items() if k in keys and k not in ("batch_size", "chunk")}
    if isinstance(out.get(EXTRA_AUGMENTED), dict):
        out[EXTRA_AUGMENTED] = out[EXTRA_AUGMENTED].get("path")
    return out


def _sync(model: torch.nn.Module) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.is_cuda:
        torch.cuda.synchronize(p.device)
