"""One lookup over every task table (images and GLUE): what kind of task a name is."""

from __future__ import annotations

from ..errors import MtdError


def describe_task(name: str) -> tuple[str, tuple[str, ...]] | None:
    """``(metric, label_names)`` of a known task, or None for a task the tool does not know."""
    from . import glue, images

    try:
        t = images.get_image_task(name)
        return t.metric, tuple(t.label_names)
    except MtdError:
        pass
    try:
        g = glue.get_glue_task(name)
        return g.metric, tuple(g.label_names)
    except MtdError:
        return None


def is_image_task(name: str) -> bool:
    from . import images

    try:
        images.get_image_task(name)
        return True
    except MtdError:
        return False


def score(name: str, logits, labels) -> float:
    """The task's primary metric of predictions (logits or class ids) against gold labels."""
    import numpy as np

    from . import glue

    if is_image_task(name):
        pred = np.asarray(logits)
        pred = pred.argmax(-1) if pred.ndim == 2 else pred
        return float((pred == np.asarray(labels)).mean())
    task = glue.get_glue_task(name)
    return glue.compute_metrics(task, logits, labels)[task.metric]
