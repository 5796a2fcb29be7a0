"""Per experiment: the per-k summary, its paired differences with their intervals, and what to know reading them.

``summarize`` gives, for every experiment (never across), the rows of ``aggregate`` with the 95% intervals of
``uncertainty`` filled in, the differences of the modes (worst, best, both equal-effort values, the selection
effects), and notes: the evaluation set's granularity, what the intervals cover (and, with one repeat, that
the seed lottery's spread is not estimable), dead runs, and a warning where the runs make so few errors that
the intervals of the best cases are known to cover less than they claim. With dead runs, every row and
difference comes twice: all runs, and the dead-excluded variant.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ..tasks.chance import lower_is_better, sign
from . import resampling
from .aggregate import VARIANTS, aggregate, dead_flags
from .uncertainty import DIFFERENCES, N_RESAMPLES, experiment_intervals

DIFF_COLUMNS = ["experiment", "variant", "k", "difference", "estimate", "ci_low", "ci_high", "p_positive", "covers",
                "method"]
FEW_ERRORS = 10  # median errors per run below which the maxima's intervals under-cover (docs/statistics.md)


def summarize(df: pd.DataFrame, pool: Iterable[int] | None = None, repeats: int | None = None,
              n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list]]:
    """(per-k summary with intervals, paired differences, notes per experiment)."""
    students = df[df["k"] > 0]
    parts, diffs, notes = [], [], {}
    for exp, runs in students.groupby("experiment", sort=True) if len(students) else []:
        runs = runs.reset_index(drop=True)
        direction = sign(str(runs["metric_name"].iloc[0]))
        runs = runs.assign(metric=direction * runs["metric"])  # scores: higher is better (perplexity negated)
        exp_pool = tuple(sorted(pool if pool is not None else {t for ts in runs["teachers"] for t in ts}))
        r = repeats if repeats is not None else int(runs["seed"].nunique())
        dead = dead_flags(runs)
        notes[exp] = []
        for exclude in (False, True) if dead.any() else (False,):
            summary = aggregate(runs, exp_pool, r, exclude_dead=exclude)
            _dead_counts(summary, runs, dead)
            got = experiment_intervals(runs, str(runs["metric_name"].iloc[0]), exp_pool, r, n_resamples, seed,
                                       exclude=dead if exclude else None)
            if isinstance(got, str):
                if not exclude:
                    notes[exp].append(f"no confidence intervals: {got}")
                diff = point_differences(runs, exp_pool, r, dead if exclude else None)
            else:
                ci = got.per_k.set_index("k").reindex(summary["k"].to_numpy())
                for col in ci.columns:
                    summary[col] = ci[col].to_numpy()
                summary = summary.assign(eval_examples=got.eval_examples, repeats=got.repeats, covers=got.covers)
                diff = got.differences
                if not exclude:
                    notes[exp] += _interval_notes(got, runs)
            parts.append(in_metric_units(summary, direction))
            diffs.append(diff.assign(experiment=exp, variant=VARIANTS[exclude]))
        if dead.any():
            notes[exp].append(_dead_note(runs, dead))
        if not parts[-1 - dead.any()]["n_combinations"].gt(0).any():
            notes[exp].insert(0, "nothing to compare yet: no k-combination has both a multi-teacher run and a k = 1 "
                                 "run of each of its teachers (a sweep makes them: mtd-sweep); runs.md lists these "
                                 "runs, and no figure is drawn")
    summary = pd.concat(parts, ignore_index=True) if parts else aggregate(df, pool, repeats)
    differences = pd.concat(diffs, ignore_index=True)[DIFF_COLUMNS] if diffs else pd.DataFrame(columns=DIFF_COLUMNS)
    return summary, differences, notes


def in_metric_units(summary: pd.DataFrame, direction: float) -> pd.DataFrame:
    """The curves back in the metric's units from scores (``direction`` -1: a lower-is-better metric, whose
    ``_min`` columns then hold the worst case, its highest value); the differences stay scores: multi better
    is positive for every metric (for perplexity, the reduction single minus multi)."""
    if direction > 0:
        return summary
    out = summary.copy()
    for c in resampling.CURVES:
        if f"{c}_mean" in out:
            out[f"{c}_mean"] = -out[f"{c}_mean"]
        if f"{c}_ci_low" in out:
            out[f"{c}_ci_low"], out[f"{c}_ci_high"] = -summary[f"{c}_ci_high"], -summary[f"{c}_ci_low"]
    return out


def point_differences(runs: pd.DataFrame, pool: tuple[int, ...], r: int, exclude: np.ndarray | None) -> pd.DataFrame:
    """The differences' estimates from the runs' scores alone (no predictions kept: no intervals)."""
    primaries = [None if pd.isna(p) else int(p) for p in runs["primary"]]
    d = resampling.design(list(runs["teachers"]), primaries, list(runs["seed"]), pool, draws=r, exclude=exclude)
    values = resampling.statistics(runs["metric"].to_numpy(float)[:, None], d)[:, 0]
    width, first = len(resampling.OUTPUTS), len(resampling.CURVES)
    return pd.DataFrame([{"k": k, "difference": name, "estimate": values[j * width + first + i], "ci_low": np.nan,
                          "ci_high": np.nan, "p_positive": np.nan, "covers": "", "method": ""}
                         for j, k in enumerate(d.ks) for i, name in enumerate(DIFFERENCES)])


def _interval_notes(got, runs: pd.DataFrame) -> list[str]:
    m = got.eval_examples
    lines = [f"evaluation set: {m} sequences (perplexity resampled by sequence: exp of a ratio of sums); intervals: "
             "95%, paired bootstrap" if lower_is_better(str(runs["metric_name"].iloc[0])) else
             f"evaluation set: {m} examples: one example = {100 / m:.3g} points; intervals: 95%, paired bootstrap"]
    if got.repeats < 2:
        lines.append("1 repeat (one student seed per run): the intervals cover the evaluation examples only; the "
                     "seed lottery's spread is not estimable from one repeat. 2 repeats make it estimable (--repeats; "
                     "make sweep and make paper run 3), and even then a minimum or maximum over 2-3 repeats is "
                     "coarse")
    elif got.covers == "examples":
        lines.append(f"{got.repeats} repeats, but the intervals cover the evaluation examples only: "
                     f"{got.why_examples_only} (the seeds are resampled jointly only when every repeat is there)")
    else:
        lines.append(f"{got.repeats} repeats: the intervals cover the evaluation examples and the student seeds "
                     "(repeats resampled jointly across combinations and modes); a minimum or maximum over "
                     f"{got.repeats} repeats is coarse")
    errors = _median_errors(runs, m)
    if errors is not None and errors < FEW_ERRORS:
        lines.append(f"near the ceiling: the median run makes {errors:g} errors on {m} examples; with under "
                     f"{FEW_ERRORS} errors per run the intervals of the best cases (maxima over runs) cover less than "
                     "95% (the single-teacher best case measured at 0.83-0.92 on simulated sweeps, "
                     "docs/statistics.md): a larger evaluation set resolves them")
    return lines


def _median_errors(runs: pd.DataFrame, m: int) -> float | None:
    if str(runs["metric_name"].iloc[0]) != "accuracy":
        return None
    return float(np.round(np.median((1 - runs["metric"].to_numpy(float)) * m)))


def _dead_counts(summary: pd.DataFrame, runs: pd.DataFrame, dead: np.ndarray) -> None:
    """Dead runs per mode and k: multi, the runs of that size; single, the k = 1 runs (in every k's single mode);
    unknown (NaN) when no run kept its predictions."""
    if "dead" not in runs or runs["dead"].isna().all():
        return
    sizes = runs["k"].to_numpy()
    summary["multi_dead"] = [int((dead & (sizes == k)).sum()) for k in summary["k"]]
    summary["single_dead"] = int((dead & (sizes == 1)).sum())


def _dead_note(runs: pd.DataFrame, dead: np.ndarray) -> str:
    single = int((dead & (runs["k"].to_numpy() == 1)).sum())
    why = "no better than the unigram distribution" if lower_is_better(str(runs["metric_name"].iloc[0])) else \
        "one class predicted, or no better than the majority class"
    return (f"{int(dead.sum())} dead runs ({why}), {single} of "
            "them single-teacher: kept in the main numbers (a lost seed lottery), left out with their combinations "
            "in the dead-excluded variant; see runs.md")
