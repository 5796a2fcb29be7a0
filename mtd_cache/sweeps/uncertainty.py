"""How far the curves can be trusted: a paired bootstrap over the evaluation examples.

An evaluation set is finite: MRPC's dev set has 408 examples, the demo's digits 360, so one example
moves an accuracy by 100/M points, and two curves a few examples apart may differ by the set's own
noise. Every curve of the report (per k: both modes' min and max, averaged over the combinations, and
the equal-effort values) is a function of every run's predictions. The bootstrap resamples the
evaluation examples with replacement, **the same resample for every run** of the experiment (paired:
the runs are compared on the same examples), recomputes each run's metric on it and the curves from
those, and reports the 2.5th and 97.5th percentiles (``scipy.stats.bootstrap``, ``method="percentile"``,
seeded: the bias-corrected BCa returns NaN when the runs predict alike). The paired difference of the
modes, multi-teacher minus single-teacher worst case (and best case, and both equal-effort values), gets
its interval and the share of resamples in which it is positive.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd
from scipy import stats

from .aggregate import CURVES, DIFFERENCES
from .records import load_predictions

log = logging.getLogger(__name__)

N_RESAMPLES = 2000
CONFIDENCE = 0.95
_BATCH_ELEMENTS = 40_000_000  # runs x resamples x examples held at once while resampling


@dataclass
class Intervals:
    """One experiment's intervals: per k the curves' CI, and the modes' paired differences."""

    per_k: pd.DataFrame  # k, <curve>_ci_low, <curve>_ci_high
    differences: pd.DataFrame  # k, difference, estimate, ci_low, ci_high, p_positive
    eval_examples: int  # M: one example = 100 / M points


def experiment_intervals(runs: pd.DataFrame, metric: str, pool: tuple[int, ...], r: int,
                         n_resamples: int = N_RESAMPLES, seed: int = 0) -> Intervals | str:
    """The intervals of one experiment's student runs (k >= 1), or why there are none."""
    loaded = [load_predictions(p) for p in runs["predictions"]]
    if any(x is None for x in loaded):
        return f"{sum(x is None for x in loaded)} of {len(loaded)} runs kept no predictions"
    labels = loaded[0][1]
    if any(len(lab) != len(labels) or not np.array_equal(lab, labels) for _, lab in loaded):
        return "the runs were scored on different evaluation sets"
    pred = np.stack([p for p, _ in loaded])
    plan = _plan(list(runs["teachers"]), pool, r)
    n_out = len(plan) * (len(CURVES) + len(DIFFERENCES))
    data, per_run = _data(pred, labels, metric)

    def statistic(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        return _outputs(per_run(sample), plan)

    point = statistic(data[:, None, :])[:, 0]
    batch = max(1, _BATCH_ELEMENTS // max(1, data.shape[0] * data.shape[1]))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # about BCa, which is not used here
        res = stats.bootstrap((data,), statistic, vectorized=True, axis=-1, method="percentile",
                              confidence_level=CONFIDENCE, n_resamples=n_resamples, batch=batch,
                              random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval.low.reshape(n_out), res.confidence_interval.high.reshape(n_out)
    dist = res.bootstrap_distribution.reshape(n_out, -1)
    return _tables(plan, point, low, high, dist, len(labels))


# ----------------------------------------------------------------------------- metrics on resamples


def _data(pred: np.ndarray, labels: np.ndarray, metric: str):
    """(the array to resample along its last axis, how to get each run's metric (runs, B) from a resample)."""
    if metric == "accuracy":
        return (pred == labels).astype(np.int8), lambda correct: correct.mean(axis=-1)
    if metric not in ("f1", "mcc"):
        raise ValueError(f"no bootstrap for the metric {metric!r}")
    data = np.vstack([labels[None], pred]).astype(np.int16)  # row 0: the labels, resampled with the predictions
    return data, (lambda d: _f1(d[1:], d[:1])) if metric == "f1" else (lambda d: _mcc(d[1:], d[:1]))


def _f1(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """F1 of class 1 (sklearn's binary F1, 0 when undefined), along the last axis."""
    tp = ((pred == 1) & (label == 1)).sum(-1)
    fp = ((pred == 1) & (label != 1)).sum(-1)
    fn = ((pred != 1) & (label == 1)).sum(-1)
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def _mcc(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Matthews correlation for any number of classes (sklearn's formula, 0 when undefined), along the last axis."""
    classes = np.union1d(np.unique(pred), np.unique(label))
    n = pred.shape[-1]
    c = (pred == label).sum(-1).astype(np.float64)
    p = np.stack([(pred == k).sum(-1) for k in classes]).astype(np.float64)
    t = np.stack([np.broadcast_to((label == k).sum(-1), c.shape) for k in classes]).astype(np.float64)
    cov_pt = c * n - (p * t).sum(0)
    den = np.sqrt((n * n - (p * p).sum(0)) * (n * n - (t * t).sum(0)))
    return np.where(den > 0, cov_pt / np.where(den > 0, den, 1.0), 0.0)


# ----------------------------------------------------------------------------- the curves, vectorised


@dataclass
class _K:
    k: int
    combos: list[tuple[np.ndarray, np.ndarray]]  # per combination with both modes: (multi rows, single rows)
    eq: list[tuple[np.ndarray, np.ndarray]]  # those with at least r runs in both modes
    r: int


def _plan(teacher_sets: list[tuple[int, ...]], pool: tuple[int, ...], r: int) -> list[_K]:
    """Which runs each combination's modes take, as ``aggregate`` takes them."""
    rows = defaultdict(list)
    for i, ts in enumerate(teacher_sets):
        if set(ts) <= set(pool):
            rows[tuple(ts)].append(i)
    plan = []
    for k in range(1, len(pool) + 1):
        combos = []
        for c in combinations(pool, k):
            singles = [rows.get((t,), []) for t in c]
            if rows.get(c) and all(singles):
                combos.append((np.array(rows[c]), np.array([i for s in singles for i in s])))
        eq = [(m, s) for m, s in combos if len(m) >= r and len(s) >= r]
        plan.append(_K(k, combos, eq, r))
    return plan


def _order_weights(n: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the sorted values in E[min] and E[max] of r draws without replacement (``expected_extremes``)."""
    i = np.arange(1, n + 1)
    total = comb(n, r)
    return (np.array([comb(n - j, r - 1) for j in i]) / total, np.array([comb(j - 1, r - 1) for j in i]) / total)


def _outputs(values: np.ndarray, plan: list[_K]) -> np.ndarray:
    """Per k, the CURVES then the DIFFERENCES (rows), for each resample (columns): (K * 12, B)."""
    rows = []
    for kp in plan:
        curve = {}
        for mode, pick in (("multi", 0), ("single", 1)):
            mins = [values[c[pick]].min(0) for c in kp.combos]
            maxs = [values[c[pick]].max(0) for c in kp.combos]
            curve[f"{mode}_min"], curve[f"{mode}_max"] = _mean(mins, values), _mean(maxs, values)
            eq_min, eq_max = [], []
            for c in kp.eq:
                v = np.sort(values[c[pick]], axis=0)
                w_min, w_max = _order_weights(len(v), kp.r)
                eq_min.append((w_min[:, None] * v).sum(0))
                eq_max.append((w_max[:, None] * v).sum(0))
            curve[f"eq_{mode}_min"], curve[f"eq_{mode}_max"] = _mean(eq_min, values), _mean(eq_max, values)
        rows += [curve[c] for c in CURVES]
        rows += [curve[a] - curve[b] for a, b in DIFFERENCES.values()]
    return np.stack(rows)


def _mean(parts: list[np.ndarray], values: np.ndarray) -> np.ndarray:
    return np.mean(parts, axis=0) if parts else np.full(values.shape[1:], np.nan)


def _tables(plan: list[_K], point: np.ndarray, low: np.ndarray, high: np.ndarray, dist: np.ndarray,
            m: int) -> Intervals:
    per_k, diffs = [], []
    width = len(CURVES) + len(DIFFERENCES)
    for j, kp in enumerate(plan):
        base = j * width
        row = {"k": kp.k}
        for i, c in enumerate(CURVES):
            row[f"{c}_ci_low"], row[f"{c}_ci_high"] = low[base + i], high[base + i]
        per_k.append(row)
        for i, name in enumerate(DIFFERENCES):
            at = base + len(CURVES) + i
            finite = dist[at][np.isfinite(dist[at])]
            diffs.append({"k": kp.k, "difference": name, "estimate": point[at], "ci_low": low[at],
                          "ci_high": high[at], "p_positive": float((finite > 0).mean()) if len(finite) else np.nan})
    return Intervals(pd.DataFrame(per_k), pd.DataFrame(diffs), m)
