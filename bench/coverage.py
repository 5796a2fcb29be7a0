#!/usr/bin/env python
"""How often the report's 95% intervals cover the truth: on simulated sweeps, or on a finished sweep's own runs.

Two ways, both printing, per statistic, the coverage averaged over k (and its lowest k):

    python bench/coverage.py --simulate [--repeats 1] [--teachers 4] [--base 1.5] [--reps 200]
    python bench/coverage.py runs/demo-digits [--reps 200]

``--simulate`` draws sweeps from ``mtd_cache.sweeps.simulate.Population`` (a known truth: docs/statistics.md
has the table for several populations). Given a runs folder, the observed runs are the population, as an
audit of a report would take them: each replicate draws a fresh evaluation set of M examples with
replacement from the M observed ones and, with R >= 2 repeats, R repeats with replacement from the R
observed ones; the truth is every statistic on all observed examples, averaged over the repeat draws.
The experiment with the most runs is used (``--experiment`` picks another).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np

from mtd_cache.sweeps import resampling as rs
from mtd_cache.sweeps import simulate as sm
from mtd_cache.sweeps.records import load_predictions, load_records

SHOWN = ("multi_min", "multi_max", "single_min", "single_max", "eq_multi_min", "eq_single_min", "eq_single_max",
         "worst", "best", "eq_worst", "eq_best")


def report(covered: np.ndarray, truth: np.ndarray, ks: list[int]) -> None:
    for name in SHOWN:
        rows = [j * len(rs.OUTPUTS) + rs.OUTPUTS.index(name) for j, k in enumerate(ks)
                if not (k == 1 and name in rs.DIFFERENCES) and np.isfinite(truth[j * len(rs.OUTPUTS)
                                                                                  + rs.OUTPUTS.index(name)])]
        if rows:
            got = covered[rows]
            print(f"  {name:<14} {got.mean():.3f}  (lowest k: {got.min():.3f})")


def observed(runs_dir: str, experiment: str | None, reps: int, n_resamples: int, n_inner: int, seed: int) -> None:
    df = load_records(runs_dir)
    df = df[df["k"] > 0]
    exp = experiment or df["experiment"].value_counts().idxmax()
    runs = df[df["experiment"].str.startswith(exp)].reset_index(drop=True)
    loaded = [load_predictions(p) for p in runs["predictions"]]
    labels = loaded[0][1]
    pred = np.stack([p for p, _ in loaded])
    metric = str(runs["metric_name"].iloc[0])
    seeds = sorted(set(runs["seed"]))
    by_seed = {s: np.flatnonzero(runs["seed"].to_numpy() == s) for s in seeds}
    base = by_seed[seeds[0]]  # the runs of one repeat, in the order every repeat shares
    order = {s: _align(runs, by_seed[s], base) for s in seeds}
    sets = [tuple(runs["teachers"][i]) for i in base]
    primaries = [None if runs["primary"].isna()[i] else int(runs["primary"][i]) for i in base]
    r, m = len(seeds), len(labels)
    pool = sorted({t for s in sets for t in s})
    design = rs.design(sets * r, primaries * r, [j for j in range(r) for _ in base], pool)

    def rows_of(draw: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([order[seeds[j]] for j in draw])

    full = rs.counts_for(pred, labels, metric).evaluate(np.ones((m, 1), np.float32))[:, 0]
    draws = list(itertools.product(range(r), repeat=r)) if r > 1 else [(0,)]
    truth = np.mean([rs.statistics(full[rows_of(dr)][:, None], design)[:, 0] for dr in draws], axis=0)
    rng = np.random.default_rng(seed)
    covered = np.zeros(len(truth))
    t0 = time.perf_counter()
    for i in range(reps):
        dr = tuple(rng.integers(0, r, r)) if r > 1 else (0,)
        ex = rng.integers(0, m, m)
        got = rs.bootstrap(rs.counts_for(pred[rows_of(dr)][:, ex], labels[ex], metric), design, n_resamples,
                           n_inner, seed=i)
        covered += (got.low <= truth + 1e-12) & (truth <= got.high + 1e-12)
    print(f"{runs_dir}: experiment {exp[:8]}, {len(runs)} runs, R = {r}, M = {m}, {metric}; {reps} replicates "
          f"in {time.perf_counter() - t0:.0f} s; intervals cover {design.covers}")
    report(covered / reps, truth, design.ks)


def _align(runs, rows: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``rows`` (one repeat's runs) in the order of ``base``'s (teachers, primary)."""
    key = {(tuple(runs["teachers"][i]), runs["primary"][i]): i for i in rows}
    try:
        return np.array([key[(tuple(runs["teachers"][i]), runs["primary"][i])] for i in base])
    except KeyError:
        sys.exit("every repeat must hold the same runs (a complete sweep)")


def simulated(args: argparse.Namespace) -> None:
    pop = sm.Population(teachers=args.teachers, repeats=args.repeats, examples=args.examples, base=args.base)
    t0 = time.perf_counter()
    got = sm.coverage(pop, args.reps, over_seeds=args.repeats > 1, n_resamples=args.resamples, n_inner=args.inner,
                      seed=args.seed)
    print(f"{pop}: {args.reps} sweeps in {time.perf_counter() - t0:.0f} s")
    report(got["covered"], got["truth"], list(range(1, pop.teachers + 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="?", help="a finished sweep's runs folder (else --simulate)")
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--experiment")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--inner", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teachers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--examples", type=int, default=360)
    ap.add_argument("--base", type=float, default=1.5, help="a single-teacher run's skill: 1.5 ~ 91%%, 2.4 ~ 98.4%%")
    args = ap.parse_args()
    if args.simulate or not args.runs:
        simulated(args)
    else:
        observed(args.runs, args.experiment, args.reps, args.resamples, args.inner, args.seed)


if __name__ == "__main__":
    main()
