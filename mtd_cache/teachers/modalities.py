"""The modality adapter of a task: ``text``, ``vision`` or ``lm`` (language modelling), chosen by the task's kind."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import lm, text, vision


def modality(task: Any) -> ModuleType:
    """The adapter that trains, runs and dumps teachers of ``task`` (a task object)."""
    return {"image": vision, "lm": lm}.get(task.kind, text)
