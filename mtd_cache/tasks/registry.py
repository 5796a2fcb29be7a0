"""One registry over every task: a name or a task file -> the task, which says its kind ("text" or "image").

Every task has ``name``, ``kind``, ``metric``, ``label_names``, ``num_labels`` and ``score(predictions,
labels)``; a text task reads its splits as text (``glue.GlueTask``), an image task as pixels
(``images.ImageTask``). The teachers and students pick their modality by ``kind``, never by name.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import MtdError
from .glue import GLUE_TASKS, GlueTask, get_glue_task
from .images import IMAGE_TASKS, ImageTask, get_image_task

Task = GlueTask | ImageTask


def find_task(name: str) -> Task | None:
    """The built-in task called ``name``, or None when unknown (a task file's task is a value: ``get_task(path)``,
    ``task_of_store(store)``)."""
    for lookup in (get_image_task, get_glue_task):
        try:
            return lookup(name)
        except MtdError:
            pass
    return None


def get_task(name: str | Any) -> Task:
    """The task called ``name``, or described by the task file at that path; an MtdError lists every known name."""
    if not isinstance(name, str):
        return name  # a task object already
    if is_task_file(name):
        from .files import load_task_file

        return load_task_file(name)
    task = find_task(name)
    if task is None:
        raise MtdError(f"unknown task {name!r}; known: {', '.join(known_tasks())}, or the path of a task file "
                       "(.json or .toml)")
    return task


def is_task_file(name: str) -> bool:
    """Whether ``--task`` names a task file (a path ending .json or .toml) rather than a built-in task."""
    return str(name).endswith((".json", ".toml"))


def task_of_store(store: Any, data_dir: str | None = None) -> Task:
    """The task a store was made for: a built-in one by name, or the task file it recorded (``data_dir``, when
    given, replaces the task file's folder: the data moved)."""
    if store.task_file:
        from .files import from_record

        return from_record(store.task_file, data_dir)
    task = find_task(store.task)
    if task is None:
        why = "it was imported for" if store.imported else "it was made for"
        raise MtdError(f"{store.path}: {why} task {store.task!r}, which mtd-cache does not know: "
                       "import the logits with --task TASK_FILE (a task file that describes the data) to train on it")
    return task


def known_tasks() -> list[str]:
    return [*IMAGE_TASKS, *GLUE_TASKS]


def score(name: str, predictions: Any, labels: Any) -> float:
    """The task's primary metric of predictions (logits or class ids) against gold labels."""
    return get_task(name).score(predictions, labels)
