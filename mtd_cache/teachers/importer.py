"""Bring your own teachers: build a store from logits computed by any framework."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import MtdError
from ..store import Fingerprint, StoreSpec, write_store
from ..store.format import EXTRA_IMPORTED
from ..tasks.images import get_image_task
from ..tasks.registry import find_task


def import_fingerprint(task: str, labels: np.ndarray, inputs: np.ndarray | None,
                       views: np.ndarray | None) -> str:
    """Fingerprint of an imported store: the inputs when given, else the labels alone (weaker)."""
    fp = Fingerprint().update("task", task).update("labels", labels.astype(np.int64))
    fp.update("inputs", "labels-only" if inputs is None else inputs)
    if views is not None:
        fp.update("views", views.astype(np.int16))
    return fp.hexdigest()


def import_arrays(out: str | Path, task: str, logits: np.ndarray, labels: np.ndarray,
                  dev_logits: np.ndarray | None = None, dev_labels: np.ndarray | None = None,
                  views: np.ndarray | None = None, inputs: np.ndarray | None = None,
                  label_names: Sequence[str] | None = None, metric: str | None = None,
                  teacher_model: str = "", teacher_seeds: Sequence[int] | None = None,
                  dtype: str = "float32") -> Path:
    """Validate the arrays, then write the store (nothing is written when anything is wrong)."""
    _check_arrays(logits, labels, dev_logits, dev_labels, views)
    known = find_task(task)
    if known is not None and known.kind == "image" and logits.ndim != 4:
        raise MtdError(f"{task} is an image task: its logits need a view axis, (N, V, T, C) with --views (V, 3); "
                       f"got {logits.shape}. Logits of the unaugmented images are (N, 1, T, C) with the one view "
                       f"row ({get_image_task(task).pad}, {get_image_task(task).pad}, 0)")
    num_classes, num_teachers = logits.shape[-1], logits.shape[-2]
    task_metric, task_labels = _task_defaults(task, num_classes)
    names = tuple(label_names) if label_names else task_labels
    if len(names) != num_classes:
        raise MtdError(f"{len(names)} label names ({', '.join(names)}) for {num_classes} classes in the logits")
    for name, y in (("label", labels), ("dev label", dev_labels)):
        if y is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise MtdError(f"{name} {int(y.max() if y.max() >= num_classes else y.min())} "
                           f"is outside 0..{num_classes - 1}")
    seeds = tuple(teacher_seeds) if teacher_seeds else tuple(range(num_teachers))
    if len(seeds) != num_teachers:
        raise MtdError(f"{len(seeds)} teacher seeds for {num_teachers} teachers in the logits")
    metric = metric or task_metric
    dev_metric = None
    if dev_logits is not None and dev_labels is not None and metric == "accuracy":
        dev_metric = (dev_logits.argmax(-1) == dev_labels[:, None]).mean(0)
    spec = StoreSpec(task=task, metric=metric, label_names=names, num_examples=len(labels),
                     num_teachers=num_teachers, num_dev=0 if dev_logits is None else len(dev_logits),
                     num_views=logits.shape[1] if logits.ndim == 4 else 0, logits_dtype=dtype,
                     fingerprint=import_fingerprint(task, labels, inputs, views), teacher_model=teacher_model,
                     teacher_seeds=tuple(int(s) for s in seeds), precision="imported",
                     extra={EXTRA_IMPORTED: True, "fingerprint_of": "labels" if inputs is None else "inputs"})
    return write_store(out, spec, logits, labels, dev_logits=dev_logits, dev_labels=dev_labels,
                       dev_metric=dev_metric, views=views)


def _check_arrays(logits, labels, dev_logits, dev_labels, views) -> None:
    if logits.ndim not in (3, 4):
        raise MtdError(f"logits have shape {logits.shape}: expected (N, T, C) or (N, V, T, C)")
    for name, z in (("logits", logits), ("dev logits", dev_logits)):
        if z is not None and not np.issubdtype(z.dtype, np.floating):
            raise MtdError(f"{name} have dtype {z.dtype}: expected raw floating-point logits (class ids or "
                           "one-hot labels are not logits)")
    if 0 in logits.shape:
        raise MtdError(f"logits have shape {logits.shape}: no examples, views, teachers or classes")
    if labels.shape != (logits.shape[0],):
        raise MtdError(f"labels have shape {labels.shape}: expected ({logits.shape[0]},) to match the logits")
    if not np.issubdtype(labels.dtype, np.integer):
        raise MtdError(f"labels have dtype {labels.dtype}: expected integers")
    if (dev_logits is None) != (dev_labels is None):
        raise MtdError("--dev-logits and --dev-labels go together")
    if dev_logits is not None:
        if not np.issubdtype(dev_labels.dtype, np.integer):
            raise MtdError(f"dev labels have dtype {dev_labels.dtype}: expected integers")
        want = (len(dev_labels), logits.shape[-2], logits.shape[-1])
        if dev_logits.shape != want:
            raise MtdError(f"dev logits have shape {dev_logits.shape}: expected {want}")
    if logits.ndim == 4 and (views is None or views.shape != (logits.shape[1], 3)):
        got = None if views is None else views.shape
        raise MtdError(f"logits have {logits.shape[1]} views: --views must be a ({logits.shape[1]}, 3) table, "
                       f"got {got}")


def _task_defaults(task: str, num_classes: int) -> tuple[str, tuple[str, ...]]:
    """Metric and label names of a known task; accuracy and 0..C-1 otherwise."""
    known = find_task(task)
    if known is None:
        return "accuracy", tuple(str(c) for c in range(num_classes))
    metric, names = known.metric, tuple(known.label_names)
    if len(names) != num_classes:
        raise MtdError(f"task {task} has {len(names)} classes but the logits have {num_classes}")
    return metric, tuple(names)
