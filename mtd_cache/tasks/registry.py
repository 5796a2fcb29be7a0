"""One registry over every task: a name -> the task, which says its kind ("text" or "image").

Every task has ``name``, ``kind``, ``metric``, ``label_names``, ``num_labels`` and ``score(predictions,
labels)``; a text task reads its splits as text (``glue.GlueTask``), an image task as pixels
(``images.ImageTask``). The teachers and students pick their modality by ``kind``, never by name.
"""

from __future__ import annotations

from typing import Any

from ..errors import MtdError
from .glue import GLUE_TASKS, GlueTask, get_glue_task
from .images import IMAGE_TASKS, ImageTask, get_image_task

Task = GlueTask | ImageTask


def find_task(name: str) -> Task | None:
    """The task called ``name``, or None when the tool does not know it."""
    for lookup in (get_image_task, get_glue_task):
        try:
            return lookup(name)
        except MtdError:
            pass
    return None


def get_task(name: str) -> Task:
    """The task called ``name``; an MtdError lists every known name."""
    task = find_task(name)
    if task is None:
        raise MtdError(f"unknown task {name!r}; known: {', '.join(known_tasks())}")
    return task


def known_tasks() -> list[str]:
    return [*IMAGE_TASKS, *GLUE_TASKS]


def score(name: str, predictions: Any, labels: Any) -> float:
    """The task's primary metric of predictions (logits or class ids) against gold labels."""
    return get_task(name).score(predictions, labels)
