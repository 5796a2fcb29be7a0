"""Student recipes, per method and modality: each supplies its settings, its model, its init and its loss terms.

The shared parts (the run and its record ``students.run``, the training loop ``train.fit``, the teacher
targets ``students.targets``, the data ``students.data``) live outside. A recipe module defines:

* ``Settings`` — a frozen ``settings.Settings`` dataclass: every hyper-parameter it reads, with its default,
  type, range and source (the requested values go into the run record and the run id);
* ``NEEDS_PRIMARY: bool`` — whether ``--primary`` is required (BERT students) or an error (images);
* ``build(ctx: StudentContext) -> train.Fit`` — model, optimizer, scheduler, batches, step (returning
  ``loss`` and its terms) and ``evaluate`` (returning ``{"metric": float, ...}`` on the dev/test split);
* ``RUN_KINDS`` (optional) — other run kinds it needs, by name (TinyBERT: ``{"stage1": tinybert_stage1.KIND}``),
  each run and reused by the same machinery as a student run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...errors import MtdError

# student name -> recipe module
STUDENTS = {
    "resnet8": "image_kd", "resnet14": "image_kd", "resnet20": "image_kd", "resnet32": "image_kd",
    "resnet44": "image_kd", "resnet56": "image_kd", "resnet110": "image_kd",
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
    return importlib.import_module(f".{STUDENTS[student]}", __name__)
