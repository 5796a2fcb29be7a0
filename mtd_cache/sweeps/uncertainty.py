"""How far the report's numbers can be trusted: every curve and difference with its 95% interval.

An evaluation set is finite (MRPC's dev set has 408 examples, the demo's digits 360: one example moves
an accuracy by 100/M points), and a student is one draw of the seed lottery. Every number of the report
is a function of every run's predictions, so the intervals come from resampling both, paired across runs
(``resampling.py`` says how, and which interval each statistic gets). Each interval says what it covers:
``examples`` (R = 1, or repeats missing: the seed lottery's spread is not in it) or ``examples+seeds``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..tasks.chance import lower_is_better
from . import resampling
from .records import load_predictions, load_sequence_scores

log = logging.getLogger(__name__)

N_RESAMPLES = resampling.N_OUTER
CURVES = resampling.CURVES
DIFFERENCES = (*resampling.DIFFERENCES, *resampling.SELECTION)


@dataclass
class Intervals:
    """One experiment's intervals: per k the curves' CI, and the modes' paired differences."""

    per_k: pd.DataFrame  # k, <curve>_ci_low, <curve>_ci_high
    differences: pd.DataFrame  # k, difference, estimate, ci_low, ci_high, p_positive, covers, method
    eval_examples: int  # M: one example = 100 / M points (a language model's: evaluation sequences)
    repeats: int  # R: the distinct student seeds
    covers: str  # "examples" or "examples+seeds"
    why_examples_only: str | None  # when R >= 2 but the seeds could not be resampled


def experiment_intervals(runs: pd.DataFrame, metric: str, pool: tuple[int, ...], r: int,
                         n_resamples: int = N_RESAMPLES, seed: int = 0,
                         exclude: np.ndarray | None = None) -> Intervals | str:
    """The intervals of one experiment's student runs (k >= 1), or why there are none.

    ``r``: the runs drawn for the equal-effort values; ``exclude`` (bool per run): combinations holding any of
    these runs are left out in both modes (the dead-excluded variant)."""
    got = run_counts(runs["predictions"], metric)
    if isinstance(got, str):
        return got
    counts, m = got
    primaries = [None if pd.isna(p) else int(p) for p in runs["primary"]]
    d = resampling.design(list(runs["teachers"]), primaries, list(runs["seed"]), pool, draws=r, exclude=exclude)
    got = resampling.bootstrap(counts, d, n_resamples, seed=seed)
    return _tables(d, got, m)


def run_counts(predictions: Any, metric: str) -> tuple[resampling.Counts, int] | str:
    """The bootstrap's counts of runs (their predictions' files, in order) and the evaluation set's size, or why
    there are none: class ids against labels, or a language model's NLL sums and token counts per sequence
    (scores: minus the perplexity, so that higher is better)."""
    if lower_is_better(metric):
        scores = [load_sequence_scores(p) if isinstance(p, str) else None for p in predictions]
        if any(x is None for x in scores):
            return f"{sum(x is None for x in scores)} of {len(scores)} runs kept no sequence scores"
        tokens = scores[0][1]
        if any(len(t) != len(tokens) or not np.array_equal(t, tokens) for _, t in scores):
            return "the runs were scored on different evaluation sequences"
        return resampling.perplexity_counts(np.stack([nll for nll, _ in scores]), tokens), len(tokens)
    loaded = [load_predictions(p) if isinstance(p, str) else None for p in predictions]
    if any(x is None for x in loaded):
        return f"{sum(x is None for x in loaded)} of {len(loaded)} runs kept no predictions"
    labels = loaded[0][1]
    if any(len(lab) != len(labels) or not np.array_equal(lab, labels) for _, lab in loaded):
        return "the runs were scored on different evaluation sets"
    try:
        return resampling.counts_for(np.stack([p for p, _ in loaded]), labels, metric), len(labels)
    except ValueError as exc:
        return str(exc)


def _tables(d: resampling.Design, got: resampling.Result, m: int) -> Intervals:
    per_k, diffs = [], []
    width = len(resampling.OUTPUTS)
    for j, k in enumerate(d.ks):
        base = j * width
        row: dict[str, float] = {"k": k}
        for i, c in enumerate(CURVES):
            row[f"{c}_ci_low"], row[f"{c}_ci_high"] = got.low[base + i], got.high[base + i]
        per_k.append(row)
        for i, name in enumerate(DIFFERENCES):
            at = base + len(CURVES) + i
            diffs.append({"k": k, "difference": name, "estimate": got.estimate[at], "ci_low": got.low[at],
                          "ci_high": got.high[at], "p_positive": got.p_positive[at],
                          "covers": got.covers if got.method[at] else "", "method": got.method[at]})
    why = None
    if d.repeats >= 2 and not d.complete:
        why = "some combinations lack runs of some repeats"
    return Intervals(pd.DataFrame(per_k), pd.DataFrame(diffs), m, d.repeats, got.covers, why)
