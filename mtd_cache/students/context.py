"""What a recipe sees of one run: its settings, the store, the chosen teachers, where its files go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..store import TeacherStore
from ..teachers import Teacher
from .selection import TeacherSelection, select


@dataclass
class StudentContext:
    """Everything a recipe's ``build`` may read; ``extra`` is what it reports back for the record."""

    student: str
    settings: Any  # the recipe's typed settings, resolved (defaults < store-recorded < overrides)
    requested: dict[str, Any]  # the recipe settings as requested (defaults and overrides as given): hashed in ids
    store: TeacherStore
    teachers: tuple[int, ...]  # indices into the store's teacher axis; () for the CE-only baseline
    primary: int | None
    seed: int
    device: torch.device
    data_dir: str | None = None
    online: list[Teacher] | None = None  # teachers to run inside the loop (--online), store order
    checkpoint: Path | None = None
    metrics_csv: Path | None = None
    work_dir: Path | None = None  # where runs of this student live (TinyBERT's stage-1 models under it)
    extra: dict[str, Any] = field(default_factory=dict)
    # runs (or reuses) the run of another kind this one starts from (TinyBERT stage 1) and returns its record
    prerequisite: Callable[[str], dict[str, Any]] | None = None
    # the chosen teachers, the primary, the KD rule and weights: the run's one selection (built from the fields
    # above and the settings when not given)
    selection: TeacherSelection | None = None

    def __post_init__(self) -> None:
        if self.selection is None:
            self.selection = select(self.teachers, self.primary, self.store.num_teachers, self.settings)
