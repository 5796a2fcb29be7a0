"""mtd-cache: multiple-teacher distillation from a store of cached teacher outputs.

The library API (for your own training loop; docs/guide.md, "Your own training loop")::

    from mtd_cache import KDTargets, TeacherStore, TextExamples, multi_teacher_kd, store_images
    from mtd_cache.hf import DistillationTrainer   # Hugging Face Trainer: CE + KD^k from the store

Names are imported on first use: ``import mtd_cache`` stays light (the command-line tools need no torch to
inspect a store).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The stages, lowest first: a module imports only from its own stage and the ones before it
# (docs/architecture.md; tests/test_layout.py holds every module to it).
STAGES = ("core", "store", "tasks", "models", "augment", "teachers", "students", "sweeps", "cli")

_PUBLIC = {
    "TeacherStore": "mtd_cache.store",
    "KDTargets": "mtd_cache.students.targets",
    "TextExamples": "mtd_cache.students.data",
    "store_images": "mtd_cache.students.data",
    "kd_loss": "mtd_cache.core.losses",
    "multi_teacher_kd": "mtd_cache.core.losses",
    "combine_teacher_logits": "mtd_cache.core.losses",
    "KD_RULES": "mtd_cache.core.losses",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mtd_cache' has no attribute {name!r}")
