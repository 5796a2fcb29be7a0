"""Tasks defined by task files and loaded in this process, by name (``files.load_task_file``, ``files.from_record``).

The built-in tables (``glue``, ``images``) look here for a name they do not hold, so a task file's task
is found by name wherever a built-in one is (the store records a task's name).
"""

from __future__ import annotations

from typing import Any

from ..store import Fingerprint

REGISTERED: dict[str, Any] = {}


def task_fingerprint(task: Any) -> Fingerprint:
    """A fingerprint begun with what identifies the task: its name, and a task file's content (its sha256)."""
    fp = Fingerprint().update("task", task if isinstance(task, str) else task.name)
    source = getattr(task, "source", None)
    if source:
        fp.update("task_file", source["sha256"])
    return fp
