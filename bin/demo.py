#!/usr/bin/env python
"""`make demo`: the paper's protocol in miniature, offline, on scikit-learn's bundled 8x8 digits.

Six seeded ResNet-20 teachers -> one 9-view logit store -> the full sweep of
ResNet-8 students (all 63 teacher subsets, one repeat, plus the CE-only
baseline) on two worker processes -> the report (tables and the paper's
figures). Everything goes through the command-line tools, as a user runs them.
Re-running skips what is done.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent
CACHE, RUNS = Path("cache") / "demo-digits", Path("runs") / "demo-digits"
TEACHER_EPOCHS, STUDENT_EPOCHS = "15", "10"


def run(*args: str | Path) -> None:
    print("$", " ".join(map(str, args)), flush=True)
    subprocess.run([str(BIN / str(args[0])), *map(str, args[1:])], check=True)


def main() -> None:
    t0 = time.perf_counter()
    run("mtd-cache", "teachers", "--task", "digits", "--model", "resnet20", "--seeds", "0-5",
        "--epochs", TEACHER_EPOCHS, "--out", CACHE / "teachers")
    store = CACHE / "store.h5"
    run("mtd-cache", "dump", "--task", "digits", "--teachers-dir", CACHE / "teachers", "--out", store)
    run("mtd-cache", "inspect", store)
    run("mtd-sweep", "--store", store, "--student", "resnet8", "--pool", "0-5", "--repeats", "1",
        "--epochs", STUDENT_EPOCHS, "--workers", "2", "--out", RUNS)
    run("mtd-report", RUNS, "--out", RUNS / "report")
    report = RUNS / "report"
    summary = pd.read_csv(report / "summary.csv")
    summary = summary[summary["variant"] == "all runs"]
    diffs = pd.read_csv(report / "differences.csv")
    diffs = diffs[diffs["variant"] == "all runs"].set_index(["k", "difference"])
    m, r = int(summary["eval_examples"].iloc[0]), int(summary["eq_r"].iloc[0])

    def points(k: int, name: str, interval: bool = True) -> str:
        d = diffs.loc[(k, name)]
        text = f"{100 * d['estimate']:+.2f}"
        return text + (f" [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]" if interval else "")

    print("\nResNet-8 students on digits, test accuracy. Equal effort first: each mode's mean run (R = 1 repeat),")
    print("multi-teacher (the average of the k teachers) minus single-teacher (one of them alone), in points:")
    print(f"{'k':>2} {'combos':>6} {'multi':>7} {'single':>7}  {'difference [95% CI]':<24} {'P(>0)':>6}  covers")
    for _, row in summary.iterrows():
        k = int(row["k"])
        d = diffs.loc[(k, "eq_worst")]
        print(f"{k:>2} {int(row['eq_n_combinations']):>6} {row['eq_multi_min_mean']:>7.4f} "
              f"{row['eq_single_min_mean']:>7.4f}  {points(k, 'eq_worst'):<24} {d['p_positive']:>6.3f}  {d['covers']}")
    print("\nworst and best case (the lowest and highest run of each mode), each = equal effort + selection (points):")
    for _, row in summary.iterrows():
        k = int(row["k"])
        print(f"  k={k}: worst {points(k, 'worst')} = {points(k, 'eq_worst', False)} "
              f"{points(k, 'selection_worst', False)}; best {points(k, 'best')} = {points(k, 'eq_best', False)} "
              f"{points(k, 'selection_best', False)}")
    cols = {"k": "k", "n_combinations": "combos", "multi_min_mean": "multi min", "multi_max_mean": "multi max",
            "single_min_mean": "single min", "single_max_mean": "single max"}
    print("\neach mode's worst and best run, averaged over the teacher combinations of each k:")
    print(summary[list(cols)].rename(columns=cols).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\ntest set: {m} images: one image = {100 / m:.3g} points of accuracy; {r} repeat: the intervals cover the "
          "test images only (the seed lottery's spread needs 2 or more repeats: make sweep runs 3)")
    cost = pd.read_csv(report / "cost.csv").set_index(["experiment", "component"]).groupby("component").sum()
    cached, online = cost.loc["total (cached)", "wall_s"], cost.loc["total online-equivalent", "wall_s"]
    print(f"cost of the whole sweep: {cached:.0f} s with the store (students plus their shares of the teachers' "
          f"training and the dump), {online:.0f} s online-equivalent (every student running its k teachers, plus "
          "the teachers' training); break-even and the rate used: cost.md")
    print(f"\nreport: {RUNS / 'report'} (summary.md, differences.md, cost.md, *.png); "
          f"demo finished in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
