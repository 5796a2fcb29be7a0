"""What identifies a task inside a dataset fingerprint: its name, and a task file's content."""

from __future__ import annotations

from typing import Any

from ..store import Fingerprint


def task_fingerprint(task: Any) -> Fingerprint:
    """A fingerprint begun with what identifies the task: its name, and a task file's content (its sha256)."""
    fp = Fingerprint().update("task", task if isinstance(task, str) else task.name)
    source = getattr(task, "source", None)
    if source:
        fp.update("task_file", source["sha256"])
    return fp
