"""The chance rule: when a classifier has learnt nothing, for every kind of teacher and for students alike.

A model is at chance on a labelled split when it predicts one class for every example, or when its accuracy
is at most ``CHANCE_ACCURACY_MARGIN`` (1 point) above the majority class's. Teachers (trained, image or text,
and imported) are gated by it: one class for every example is rejected (kept on disk, ``--force`` accepts
it), near chance is kept with a warning; the report calls a student that meets it *dead*.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import MtdError

CHANCE_ACCURACY_MARGIN = 0.01  # within 1 point of the majority class is at chance
SINGLE_CLASS = "predicts a single class"  # how a rejected (constant) model's reason starts
UNIGRAM = "no better than the unigram distribution"  # how a rejected language model's reason starts
REJECTED = (SINGLE_CLASS, UNIGRAM)  # reasons that reject a teacher (others only warn)
LOWER_IS_BETTER = frozenset({"perplexity"})  # metrics whose worst case is the highest


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of ``metric`` is better (perplexity): its worst case is its highest value."""
    return str(metric) in LOWER_IS_BETTER


def sign(metric: str) -> float:
    """+1 for higher-is-better metrics, -1 for lower-is-better ones: ``sign * value`` is a score where higher is
    better, what the report's minima, maxima and differences are taken on."""
    return -1.0 if lower_is_better(metric) else 1.0


def unigram_reason(perplexity: float, unigram: float, split: str = "dev") -> str | None:
    """Why a language model of ``perplexity`` on ``split`` has learnt nothing of context, or None: it is no
    better than the training tokens' unigram distribution (``unigram``, its perplexity on the same split)."""
    if not perplexity < unigram:  # a NaN perplexity is no better either
        return f"{UNIGRAM} ({split} perplexity {perplexity:.2f}, the unigram's {unigram:.2f})"
    return None


def majority_baseline(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent label."""
    gold = np.asarray(labels, dtype=np.int64)
    if gold.size == 0:
        raise MtdError("majority baseline of an empty label set")
    return float(np.bincount(gold).max() / gold.size)


def chance_reason(pred: np.ndarray, labels: np.ndarray, label_names: Sequence[str] | None = None,
                  split: str = "dev") -> str | None:
    """Why class ids ``pred`` against ``labels`` are at chance on ``split``, or None when they are not (or when
    there is nothing to judge)."""
    pred, gold = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if gold.size == 0 or pred.shape != gold.shape:
        return None
    classes = np.unique(pred)
    if classes.size == 1:
        c = int(classes[0])
        name = repr(label_names[c]) if label_names is not None and 0 <= c < len(label_names) else str(c)
        return f"{SINGLE_CLASS} ({name}) for all {pred.size} {split} examples"
    accuracy, majority = float((pred == gold).mean()), majority_baseline(gold)
    if accuracy <= majority + CHANCE_ACCURACY_MARGIN + 1e-12:
        return (f"{split} accuracy {accuracy:.4f} is not more than {CHANCE_ACCURACY_MARGIN:.2f} above the "
                f"majority-class baseline {majority:.4f}")
    return None
