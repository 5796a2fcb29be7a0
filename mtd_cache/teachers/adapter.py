"""What a modality (text, images) hands the two teacher stages; the stages own the loops.

``train.py`` trains every seed with one skeleton (energy meter, ``fit``, save, record) around a
``TeacherJob``; ``dump.py`` writes every store with one loop (spec, writer, chunks, dev pass,
finish) around a ``DumpPlan``. ``text.py`` and ``vision.py`` build these and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.fit import Fit
from ..store import StoreSpec
from ..store.format import EXTRA_TASK_FILE


@dataclass
class TeacherJob:
    """One seeded teacher's training: the ``Fit``, how to save the weights, what its record holds."""

    fit: Fit
    device: torch.device
    save: Callable[[], None]  # writes the weights (and config, tokenizer) into the seed's folder
    result: Callable[[list[dict[str, float]]], dict[str, Any]]  # history -> record fields (metric, config...)


@dataclass
class Forward:
    """One chunk's teacher outputs: logits (n, [V,] C) and, for a primary, its unpadded states."""

    logits: np.ndarray
    lengths: np.ndarray | None = None
    hidden: np.ndarray | None = None
    attn: np.ndarray | None = None


@dataclass
class DumpPlan:
    """A dump's spec (teachers' fields aside), its small datasets and how to run a teacher over it."""

    spec: StoreSpec
    small: dict[str, np.ndarray]  # whole small datasets by store name: labels, sources, views, dev labels
    chunk: int  # examples per shard
    budget_gb: float  # refuse a store estimated larger
    load: Callable[[Any], torch.nn.Module]  # a teacher -> its model on the dump's device
    # model, examples a..b, the primary's spec (or None), progress(examples done) -> the chunk's outputs
    forward: Callable[[torch.nn.Module, int, int, Any, Callable[[int], Any]], Forward]
    dev: Callable[[torch.nn.Module], tuple[np.ndarray, float]]  # model -> dev logits (M, C), dev metric
    lengths: np.ndarray | None = None  # token counts of the training examples (size estimate with states)


def task_file_extra(task: Any) -> dict[str, Any]:
    """What a store records of a task file's task (students rebuild the task from it); nothing for built-ins."""
    return {EXTRA_TASK_FILE: task.record()} if hasattr(task, "record") else {}
