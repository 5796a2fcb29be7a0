"""The modality adapter of a task: ``text`` or ``vision``, chosen by the task's kind."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import text, vision


def modality(task: Any) -> ModuleType:
    """The adapter that trains, runs and dumps teachers of ``task`` (a task object)."""
    return vision if task.kind == "image" else text
