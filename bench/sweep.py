#!/usr/bin/env python
"""A small 6-teacher sweep of ResNet-20 students: from the store vs with the teachers online.

Six ResNet-110 teachers (1 epoch on the bundled digits: their accuracy does not
matter here, their cost does) are dumped once; then the same sweep of ResNet-20
students (every subset of the pool, one repeat, ``--epochs`` each) runs (a) from the
store with 1 worker, (b) from the store with 2 workers, (c) with the teachers
computed online, 1 worker. Prints total wall times and the ratios c/a (goal >= 5)
and a/b. Whole sweeps are timed, worker start-up included.

A run from the store costs what CE-only training costs, so c/a is a compute
ratio, 1 + mean k x (one teacher forward / one student step), mean k = 192/63
for pool 0-5; it does not grow with --epochs (measured: 4.84 at 1 epoch, 4.70 at
3). On 8x8 digits a ResNet-110 forward is cheap next to a ResNet-20 step; the
CIFAR-shaped per-step costs are in bench/kd_step.py.

Usage: python bench/sweep.py [--pool 0-5] [--epochs 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from mtd_cache.dump import run_dump
from mtd_cache.plan import parse_index_set
from mtd_cache.sweep import SweepConfig, run_sweep
from mtd_cache.teachers import train_teachers


def timed_sweep(cfg: SweepConfig, workers: int) -> tuple[float, int]:
    shutil.rmtree(cfg.out, ignore_errors=True)
    t0 = time.perf_counter()
    results = run_sweep(cfg, workers=workers)
    return time.perf_counter() - t0, len(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="0-5", help="teacher pool (0-3 for a quicker run)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per student run")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mtd-bench" / "sweep")
    args = ap.parse_args()
    root = args.workdir
    t0 = time.perf_counter()
    train_teachers("digits", range(6), root / "teachers", "resnet110", None, {"epochs": 1, "batch_size": 256})
    store = run_dump("digits", root / "teachers", root / "store.h5", [], {})
    print(f"(6 ResNet-110 teachers and the 9-view store ready in {time.perf_counter() - t0:.0f} s)")
    base = dict(stores=(str(store),), student="resnet20", pool=parse_index_set(args.pool), repeats=1,
                overrides={"epochs": args.epochs})
    a, n = timed_sweep(SweepConfig(**base, out=str(root / "runs-a")), 1)
    b, _ = timed_sweep(SweepConfig(**base, out=str(root / "runs-b")), 2)
    c, _ = timed_sweep(SweepConfig(**base, out=str(root / "runs-c"), teachers_dir=str(root / "teachers")), 1)
    print(f"sweep of {n} ResNet-20 runs (pool {args.pool}, {args.epochs} epochs each, digits, 6 ResNet-110 teachers):")
    print(f"  (a) store, 1 worker     {a:8.1f} s")
    print(f"  (b) store, 2 workers    {b:8.1f} s   a/b = {a / b:.2f}")
    print(f"  (c) online, 1 worker    {c:8.1f} s   c/a = {c / a:.2f} (goal >= 5)")


if __name__ == "__main__":
    main()
