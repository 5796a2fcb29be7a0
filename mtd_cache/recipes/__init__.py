"""Student recipes: each supplies its model, init, data and loss terms — nothing else.

The shared parts (the training loop, the run record, seeding, the store) live
in ``train.py``, ``students.py`` and ``store``. A recipe module defines:

* ``DEFAULTS: dict`` — every hyper-parameter it reads, with its default
  (the resolved values go into the run record and the run id);
* ``NEEDS_PRIMARY: bool`` — whether ``--primary`` is required (BERT students)
  or an error (ResNets);
* ``defaults_for(store) -> dict`` — optional task-dependent overrides of DEFAULTS;
* ``build(ctx: StudentContext) -> train.Fit`` — model, optimizer, scheduler,
  batches, step (returning ``loss`` and its terms) and ``evaluate``
  (returning ``{"metric": float, ...}`` on the dev/test split).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..errors import MtdError
from ..store import TeacherStore
from ..teachers import Teacher

# student name -> recipe module
STUDENTS = {
    "resnet8": "resnet", "resnet14": "resnet", "resnet20": "resnet", "resnet32": "resnet",
    "resnet44": "resnet", "resnet56": "resnet", "resnet110": "resnet",
    "distilbert": "distilbert",
    "tinybert": "tinybert",
}


# student name -> (needs a primary teacher, two-stage with a shared stage 1): what a sweep plan needs to know
TRAITS = {"distilbert": (True, False), "tinybert": (True, True)}


def student_traits(student: str) -> tuple[bool, bool]:
    """(needs_primary, two_stage) of a student, without importing its recipe."""
    if student not in STUDENTS:
        raise MtdError(f"unknown student {student!r}; choose one of {', '.join(STUDENTS)}")
    return TRAITS.get(student, (False, False))


def get_recipe(student: str) -> ModuleType:
    if student not in STUDENTS:
        raise MtdError(f"unknown student {student!r}; choose one of {', '.join(STUDENTS)}")
    try:
        return importlib.import_module(f".{STUDENTS[student]}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{STUDENTS[student]}":
            raise MtdError(f"student {student!r} is not available in this version of mtd-cache") from None
        raise


@dataclass
class StudentContext:
    """Everything a recipe's ``build`` may read."""

    student: str
    config: dict[str, Any]  # resolved hyper-parameters (recipe DEFAULTS overridden by the user)
    store: TeacherStore
    teachers: tuple[int, ...]  # indices into the store's teacher axis; () for the CE-only baseline
    primary: int | None
    seed: int
    device: torch.device
    data_dir: str | None = None
    online: list[Teacher] | None = None  # teachers to run inside the loop (--online), store order
    checkpoint: Path | None = None
    metrics_csv: Path | None = None
    work_dir: Path | None = None  # where a recipe may keep reusable artefacts (TinyBERT stage 1)
    extra: dict[str, Any] = field(default_factory=dict)  # what a recipe reports back for the record
