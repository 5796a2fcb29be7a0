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
from ..utils import sha256_file

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


# ----------------------------------------------------------------------------- BERT teachers, for BERT students


def teacher_path(ctx: StudentContext, t: int) -> str:
    """Teacher ``t``'s folder (the ``--online`` one, else the store's record), checked against the store's hash."""
    paths, hashes = ctx.store.attrs.get("teacher_paths", []), ctx.store.attrs.get("teachers_sha256", [])
    if not 0 <= t < len(paths):
        raise MtdError(f"teacher {t} is outside the store's teachers 0..{len(paths) - 1}")
    path = str(ctx.online[t].path) if ctx.online else paths[t]
    got = sha256_file(f"{path}/model.safetensors")
    if hashes and got != hashes[t]:
        raise MtdError(f"teacher {t} at {path} is not the one the store was dumped from (sha256 {got[:12]} != "
                       f"{hashes[t][:12]})")
    return path


def online_target(ctx: StudentContext, use_cos: bool, device: torch.device):
    """Run the chosen teachers in the loop (``--online``): the baseline the store is measured against.

    Returns ``target(batch) -> (logits (B, k, C), primary's last hidden state or None)``.
    """
    from ..models import bert

    num_labels = ctx.store.num_classes
    models = {t: bert.load_classifier(ctx.online[t].path, num_labels).to(device).eval() for t in ctx.teachers}
    for m in models.values():
        m.requires_grad_(False)

    def target(b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            outs = {t: m(**bert.model_inputs(m, b), output_hidden_states=use_cos and t == ctx.primary)
                    for t, m in models.items()}
        logits = torch.stack([outs[t].logits for t in sorted(outs)], dim=1)  # (B, k, C): kd_loss averages
        return logits, outs[ctx.primary].hidden_states[-1] if use_cos else None

    return target
