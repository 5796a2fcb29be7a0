"""The paper's aggregation of a sweep's runs (the paper's sweep protocol), per experiment.

Choices, named once:

- **Modes, per k-combination of the pool.** *Multi-teacher*: min and max over
  the runs whose teacher set equals the combination, whatever their primary
  and repeat. *Single-teacher*: min and max over the k = 1 runs of the
  combination's members. A combination enters a k's statistics only when both
  modes have runs for it, so the two modes are compared on the same combinations.
- **Population std** (``ddof=0``) over combinations: the C(T, k) combinations
  are the whole population, not a sample, and k = T (one combination) gets
  std 0 rather than NaN.
- **Equal effort**: the exact expected min and max of r = R runs drawn without
  replacement from each mode's runs (``expected_extremes``), R being the number
  of distinct seeds unless given. A combination where a mode has fewer than R
  runs is left out of the equal-effort columns (``eq_n_combinations``).
- **Dead runs** (``records.is_dead``) stay in the numbers: a diverged student is a lost seed lottery, which
  is what the worst case measures. ``exclude_dead`` gives the variant beside them: a combination any of
  whose runs died (in either mode) is left out of both modes, so the modes are still compared on the
  same combinations (``variant``: "all runs" or "dead excluded").
- **Distillation time** of a mode for a combination is the summed ``wall_s`` of
  the runs its min and max are taken over (what obtaining them cost). The
  figures plot the two cost axes of ``costs.run_costs`` summed the same way and
  averaged over combinations: the store's (students plus their shares of the
  teachers, the dump and stage 1) and the paper's online-equivalent (every run
  with its k teachers inside).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd

from .records import UNASSIGNED
from .resampling import CURVES, order_weights

log = logging.getLogger(__name__)

MODES = ("multi", "single")
# per-combination statistics; each becomes <name>_mean and <name>_std in the summary
COSTS = ("online_s", "cached_s", "online_j", "cached_j")  # per run: ``costs.run_costs``; summed per mode
STATS = tuple(f"{m}_{s}" for m in MODES for s in ("min", "max", "n_runs", "time_s", "run_s", *COSTS)) + \
    tuple(f"eq_{m}_{s}" for m in MODES for s in ("min", "max"))
VARIANTS = ("all runs", "dead excluded")
SUMMARY_COLUMNS = ["experiment", "variant", "task", "student", "metric_name", "k", "n_expected", "n_combinations",
                   "eq_r", "eq_n_combinations"] + [f"{s}_{a}" for s in STATS for a in ("mean", "std")] + \
    [f"{c}_ci_{e}" for c in CURVES for e in ("low", "high")] + \
    ["eval_examples", "repeats", "covers", "multi_dead", "single_dead"]
_Run = tuple[float, ...]  # (metric, wall_s, *COSTS, dead)


def expected_extremes(values: Sequence[float], r: int) -> tuple[float, float]:
    """Exact (E[min], E[max]) of ``r`` values drawn without replacement from ``values``: the sorted values
    weighted by how many of the C(n, r) subsets each is the minimum or maximum of (``resampling.order_weights``).
    Ties need no care."""
    x = np.sort(np.asarray(values, dtype=float))
    if not 1 <= r <= len(x):
        raise ValueError(f"cannot draw r = {r} of {len(x)} values")
    if np.isnan(x).any():
        raise ValueError("values contain NaN")
    w_min, w_max = order_weights(len(x), r)
    return float(w_min @ x), float(w_max @ x)


def aggregate(df: pd.DataFrame, pool: Iterable[int] | None = None, repeats: int | None = None,
              exclude_dead: bool = False) -> pd.DataFrame:
    """Per (experiment, k): both modes' min and max, time and equal-effort values, mean and std over the
    k-combinations of ``pool`` (default: every teacher in the runs). Never across experiments. Columns:
    SUMMARY_COLUMNS (the intervals' columns are NaN here: the report fills them from ``uncertainty``)."""
    parts = []
    students = df[df["k"] > 0]
    if "experiment" not in students:
        students = students.assign(experiment=UNASSIGNED)
    keys = ["experiment", "task", "student", "metric_name"]
    for (experiment, task, student, metric_name), runs in students.groupby(keys, sort=True):
        summary = _aggregate_runs(runs, pool, repeats, exclude_dead)
        for name, value in (("metric_name", metric_name), ("student", student), ("task", task),
                            ("variant", VARIANTS[exclude_dead]), ("experiment", experiment)):
            summary.insert(0, name, value)
        parts.append(summary)
    if not parts:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return pd.concat(parts, ignore_index=True).reindex(columns=SUMMARY_COLUMNS)


def _aggregate_runs(runs: pd.DataFrame, pool: Iterable[int] | None, repeats: int | None,
                    exclude_dead: bool) -> pd.DataFrame:
    """The per-k summary of one student's runs."""
    pool = tuple(sorted(pool if pool is not None else {t for ts in runs["teachers"] for t in ts}))
    r = repeats if repeats is not None else int(runs["seed"].nunique())
    by_set: dict[tuple[int, ...], list[_Run]] = defaultdict(list)
    costs = [runs[c] if c in runs else pd.Series(math.nan, index=runs.index) for c in COSTS]
    dead = dead_flags(runs)
    for teachers, metric, wall, *cost, died in zip(runs["teachers"], runs["metric"], runs["wall_s"], *costs, dead,
                                                   strict=True):
        if set(teachers) <= set(pool):
            by_set[teachers].append((metric, wall, *cost, float(died)))
    rows = []
    for k in range(1, len(pool) + 1):
        stats = [s for c in combinations(pool, k) if (s := _combination_stats(c, by_set, r, exclude_dead)) is not None]
        if len(stats) < comb(len(pool), k):
            log.warning("%s k=%d: %d of %d combinations have runs in both modes",
                        runs["student"].iloc[0], k, len(stats), comb(len(pool), k))
        rows.append(_k_row(k, comb(len(pool), k), r, stats))
    return pd.DataFrame(rows)


def dead_flags(runs: pd.DataFrame) -> np.ndarray:
    """Per run, whether it died (unknown: no)."""
    return runs["dead"].fillna(False).astype(bool).to_numpy() if "dead" in runs else np.zeros(len(runs), bool)


def _combination_stats(combo: tuple[int, ...], by_set: dict[tuple[int, ...], list[_Run]], r: int,
                       exclude_dead: bool = False) -> dict[str, float] | None:
    """Both modes' statistics for one combination; None when a mode has no runs for it (or, with
    ``exclude_dead``, when any of its runs died)."""
    singles = [by_set.get((t,), []) for t in combo]
    mode_runs = {"multi": by_set.get(combo, []), "single": [run for s in singles for run in s]}
    if not mode_runs["multi"] or not all(singles):
        return None
    if exclude_dead and any(run[-1] for runs in mode_runs.values() for run in runs):
        return None
    out: dict[str, float] = {}
    for mode, mode_list in mode_runs.items():
        metric, wall, *cost, _ = np.array(mode_list, dtype=float).T
        out.update({f"{mode}_min": metric.min(), f"{mode}_max": metric.max(), f"{mode}_n_runs": len(metric),
                    f"{mode}_time_s": wall.sum(), f"{mode}_run_s": wall.mean()})
        out.update({f"{mode}_{name}": c.sum() for name, c in zip(COSTS, cost, strict=True)})  # NaN if unknown
    enough = all(len(runs) >= r for runs in mode_runs.values())
    for mode, mode_list in mode_runs.items():
        lo, hi = expected_extremes([run[0] for run in mode_list], r) if enough else (math.nan, math.nan)
        out.update({f"eq_{mode}_min": lo, f"eq_{mode}_max": hi})
    return out


def _k_row(k: int, n_expected: int, r: int, stats: list[dict[str, float]]) -> dict[str, float]:
    """Mean and population std over the combinations of every statistic (NaNs left out)."""
    row: dict[str, float] = {"k": k, "n_expected": n_expected, "n_combinations": len(stats), "eq_r": r,
                             "eq_n_combinations": sum(not math.isnan(s["eq_multi_min"]) for s in stats)}
    for name in STATS:
        vals = np.array([s[name] for s in stats], dtype=float)
        vals = vals[~np.isnan(vals)]
        row[f"{name}_mean"] = float(vals.mean()) if len(vals) else math.nan
        row[f"{name}_std"] = float(vals.std(ddof=0)) if len(vals) else math.nan
    return row
