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
    summary = pd.read_csv(RUNS / "report" / "summary.csv")
    cols = {"k": "k", "n_combinations": "combos", "multi_min_mean": "multi min", "multi_max_mean": "multi max",
            "single_min_mean": "single min", "single_max_mean": "single max"}
    print("\nResNet-8 students on digits, test accuracy averaged over the teacher combinations of each k")
    print(summary[list(cols)].rename(columns=cols).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    m = int(summary["eval_examples"].iloc[0])
    print(f"\ntest set: {m} images: one image = {100 / m:.3g} points of accuracy")
    diffs = pd.read_csv(RUNS / "report" / "differences.csv")
    worst = diffs[diffs["difference"] == "worst"]
    print("worst case, multi-teacher minus single-teacher (points), 95% paired bootstrap interval, P(> 0):")
    for _, d in worst.iterrows():
        print(f"  k={int(d['k'])}: {100 * d['estimate']:+.2f}  [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"
              f"  P(>0) = {d['p_positive']:.2f}")
    cost = pd.read_csv(RUNS / "report" / "cost.csv").set_index("component")
    cached, online = cost.loc["total", "wall_s"], cost.loc["total online-equivalent", "wall_s"]
    print(f"cost of the whole sweep: {cached:.0f} s with the store (teachers, dump and every student), "
          f"{online:.0f} s online-equivalent (every student running its k teachers, teachers' training not "
          "counted); per combination on both axes: cost.md and the *_score_vs_{online,cached}_time.png figures")
    print(f"\nreport: {RUNS / 'report'} (summary.md, differences.md, cost.md, *.png); "
          f"demo finished in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
