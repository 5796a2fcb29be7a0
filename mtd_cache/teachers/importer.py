"""Bring your own teachers: build a store from logits computed by any framework (``mtd-cache import``).

For a task the tool knows (built in, or a task file), the import ties the logits to the task's training
examples, row i = example i: the count and the labels must match (and, with ``--inputs``, the inputs
themselves, row by row), and the store gets the fingerprint a dump of the same data would have, so
``mtd-train`` and ``mtd-sweep`` train on it as on a dumped store (a student checks its data against it).
Image logits carry a view axis (the views the student's augmentation draws from); text stores record
the tokenizer the students will tokenise with (``--tokenizer``). For a task it does not know, the store
holds the logits and labels only (fingerprinted by the labels, and the inputs when given): a store to
inspect, not to train on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..store import Fingerprint, StoreSpec, check_finite_logits, write_store
from ..store.format import (
    EXTRA_AUGMENTED,
    EXTRA_DATA_DIR,
    EXTRA_IMPORTED,
    EXTRA_MAX_LENGTH,
    EXTRA_TOKENIZER,
    EXTRA_TRAIN_SUBSET,
)
from ..tasks.chance import SINGLE_CLASS, chance_reason
from ..tasks.image_data import ImageData, image_fingerprint
from ..tasks.registry import find_task, get_task, is_task_file
from .adapter import task_file_extra
from .seeds import TeachersRejected

log = logging.getLogger(__name__)


def import_fingerprint(task: str, labels: np.ndarray, inputs: np.ndarray | None,
                       views: np.ndarray | None) -> str:
    """Fingerprint of a store of an unknown task: the inputs when given, else the labels alone (weaker)."""
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
                  dtype: str = "float32", tokenizer: str | None = None, max_length: int = 128,
                  data_dir: str | None = None, force: bool = False) -> Path:
    """Validate the arrays (against the task's data when the task is known), gate the teachers on the dev
    logits when given (``gate``; ``force`` imports rejected ones), then write the store."""
    _check_arrays(logits, labels, dev_logits, dev_labels, views)
    spec_task = get_task(task) if is_task_file(task) else find_task(task)
    num_classes, num_teachers = logits.shape[-1], logits.shape[-2]
    names = tuple(label_names) if label_names else \
        tuple(spec_task.label_names) if spec_task is not None else tuple(str(c) for c in range(num_classes))
    if len(names) != num_classes:
        raise MtdError(f"{len(names)} label names ({', '.join(names)}) for {num_classes} classes in the logits")
    for name, y in (("label", labels), ("dev label", dev_labels)):
        if y is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise MtdError(f"{name} {int(y.max() if y.max() >= num_classes else y.min())} "
                           f"is outside 0..{num_classes - 1}")
    seeds = tuple(teacher_seeds) if teacher_seeds else tuple(range(num_teachers))
    if len(seeds) != num_teachers:
        raise MtdError(f"{len(seeds)} teacher seeds for {num_teachers} teachers in the logits")
    if spec_task is None:
        fingerprint, extra = import_fingerprint(task, labels, inputs, views), \
            {"fingerprint_of": "labels" if inputs is None else "inputs"}
        task_name, metric = task, metric or "accuracy"
    else:
        tie = _tie_images if spec_task.kind == "image" else _tie_text
        fingerprint, extra = tie(spec_task, logits, labels, dev_labels, views, inputs, tokenizer, max_length,
                                 data_dir)
        task_name, metric = spec_task.name, metric or spec_task.metric
        extra.update(task_file_extra(spec_task))
    warnings = gate(dev_logits, dev_labels, names, seeds, force)
    dev_metric = None
    if dev_logits is not None and dev_labels is not None and metric == "accuracy":
        dev_metric = (dev_logits.argmax(-1) == dev_labels[:, None]).mean(0)
    spec = StoreSpec(task=task_name, metric=metric, label_names=names, num_examples=len(labels),
                     num_teachers=num_teachers, num_dev=0 if dev_logits is None else len(dev_logits),
                     num_views=logits.shape[1] if logits.ndim == 4 else 0, logits_dtype=dtype,
                     fingerprint=fingerprint, teacher_model=teacher_model,
                     teacher_seeds=tuple(int(s) for s in seeds), precision="imported",
                     extra={EXTRA_IMPORTED: True, **extra})
    path = write_store(out, spec, logits, labels, dev_logits=dev_logits, dev_labels=dev_labels,
                       dev_metric=dev_metric, views=views)
    for line in warnings:  # once the store is written: a refused import says only why it was refused
        log.warning("%s", line)
    return path


def gate(dev_logits: np.ndarray | None, dev_labels: np.ndarray | None, names: Sequence[str], seeds: Sequence[int],
         force: bool) -> list[str]:
    """The teachers' quality gate on imported logits (``tasks.chance``), as for teachers trained here: a teacher
    that predicts one class for every dev example refuses the import (exit status 4) unless ``force``; one near
    chance is imported with a warning (returned, for the caller to log once the store is written). Without dev
    logits there is nothing to judge."""
    if dev_logits is None or dev_labels is None or len(dev_labels) == 0:
        return []
    check_finite_logits(dev_logits, "dev logits")
    rejected, warnings = [], []
    for t, seed in enumerate(seeds):
        reason = chance_reason(dev_logits[:, t].argmax(-1), dev_labels, names, "dev")
        if reason is None:
            continue
        if reason.startswith(SINGLE_CLASS) and not force:
            rejected.append(f"teacher {t} (seed {seed}): {reason}")
        else:
            constant = reason.startswith(SINGLE_CLASS)
            warnings.append(f"teacher {t} (seed {seed}) is {'at chance' if constant else 'near chance level'}: "
                            f"{reason} (imported{', --force' if constant else ''})")
    if rejected:
        raise TeachersRejected(f"{rejected[0]}{f' (and {len(rejected) - 1} more)' if len(rejected) > 1 else ''}; "
                               "nothing written: leave it out of the arrays, or --force imports it")
    return warnings


def _tie_images(task: Any, logits: np.ndarray, labels: np.ndarray, dev_labels: np.ndarray | None,
                views: np.ndarray | None, inputs: np.ndarray | None, tokenizer: str | None, max_length: int,
                data_dir: str | None) -> tuple[str, dict[str, Any]]:
    """Row i = training image i of the task: count, labels, inputs and views checked; the dump's fingerprint."""
    if logits.ndim != 4:
        raise MtdError(f"{task.name} is an image task: its logits need a view axis, (N, V, T, C) with --views "
                       f"(V, 3); got {logits.shape}. Logits of the unaugmented images are (N, 1, T, C) with the "
                       f"one view row ({task.pad}, {task.pad}, 0)")
    bad = [v for v in np.asarray(views).tolist() if not (0 <= v[0] <= 2 * task.pad and 0 <= v[1] <= 2 * task.pad
                                                        and v[2] in ((0, 1) if task.flip else (0,)))]
    if bad:
        raise MtdError(f"--views row {bad[0]}: a view of {task.name} is (dy, dx, flip) with dy, dx in "
                       f"0..{2 * task.pad} and flip {'0 or 1' if task.flip else '0 (the task does not flip)'}")
    train = ImageData.load(task, "train", data_dir, torch.device("cpu"))
    _same_rows("training images", len(train), train.labels.numpy(), labels)
    if inputs is not None:
        _same_inputs(inputs, train.images.numpy(), "--inputs (the images, (N, C, H, W) uint8)")
    if dev_labels is not None:
        test = ImageData.load(task, "test", data_dir, torch.device("cpu"))
        _same_rows("test images", len(test), test.labels.numpy(), dev_labels, "--dev-labels")
    return image_fingerprint(train, views), {EXTRA_DATA_DIR: data_dir, EXTRA_TRAIN_SUBSET: None,
                                             "test_subset": None}


def _tie_text(task: Any, logits: np.ndarray, labels: np.ndarray, dev_labels: np.ndarray | None,
              views: np.ndarray | None, inputs: np.ndarray | None, tokenizer: str | None, max_length: int,
              data_dir: str | None) -> tuple[str, dict[str, Any]]:
    """Row i = training example i of the task; with ``--tokenizer``, the fingerprint a dump would have."""
    from ..models import bert
    from ..tasks.text_data import load_split, task_inputs

    if logits.ndim != 3:
        raise MtdError(f"{task.name} is a text task: its logits are (N, T, C), not {logits.shape}")
    train = load_split(task, "train", data_dir)
    _same_rows("training examples", len(train), train.labels, labels)
    if inputs is not None:
        texts = np.array(train.text_a) if train.text_b is None else np.stack([train.text_a, train.text_b], axis=1)
        _same_inputs(inputs, texts, "--inputs (the texts, (N,) or (N, 2) for pairs)")
    if dev_labels is not None:
        dev = load_split(task, "dev", data_dir)
        _same_rows("dev examples", len(dev), dev.labels, dev_labels, "--dev-labels")
    if tokenizer is None:
        raise MtdError(f"{task.name} is a text task: give --tokenizer (the tokenizer the students will tokenise "
                       "with, a Hub name or folder) so that students can train on the store")
    tok = bert.load_tokenizer(tokenizer)
    ident = bert.tokenizer_identity(tok)
    encoded = task_inputs(task, tok, max_length, data_dir)
    return encoded.fingerprint(ident), {EXTRA_TOKENIZER: ident, EXTRA_MAX_LENGTH: int(max_length),
                                        EXTRA_DATA_DIR: data_dir, EXTRA_TRAIN_SUBSET: None, EXTRA_AUGMENTED: None}


def _same_rows(what: str, count: int, want: np.ndarray, got: np.ndarray, flag: str = "--labels") -> None:
    if len(got) != count:
        raise MtdError(f"{flag}: {len(got)} rows, but the task has {count} {what}: row i must be example i")
    diff = np.flatnonzero(np.asarray(want) != np.asarray(got))
    if len(diff):
        i = int(diff[0])
        raise MtdError(f"{flag}: row {i} has label {int(got[i])}, the task's example {i} has {int(want[i])}: "
                       f"are the rows in the task's order? ({len(diff)} rows differ)")


def _same_inputs(inputs: np.ndarray, want: np.ndarray, what: str) -> None:
    if inputs.shape != want.shape:
        raise MtdError(f"{what}: shape {inputs.shape}, the task's is {want.shape}")
    diff = np.flatnonzero((inputs != want).reshape(len(want), -1).any(axis=1))
    if len(diff):
        raise MtdError(f"{what}: row {int(diff[0])} is not the task's example {int(diff[0])} "
                       f"({len(diff)} rows differ): the logits must be in the task's order")


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
