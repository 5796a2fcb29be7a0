#!/usr/bin/env python
"""A small 6-teacher sweep of ResNet-20 students: from the store vs with the teachers online.

Six ResNet-110 teachers (``--teacher-epochs`` 1: their accuracy does not matter
here, their cost does) are dumped once; then the same sweep of ResNet-20
students (every subset of the pool plus the CE-only baseline, one repeat,
``--epochs`` each) runs (a) from the store with 1 worker, (b) from the store
with 2 workers, (c) with the teachers computed online, 1 worker. Prints total
wall times, the ratios c/a (goal >= 5) and a/b, and c / (a + dump): the whole
cost of the store, its one-off dump included. Whole sweeps are timed, worker
start-up included.

A run from the store costs what CE-only training costs, so c/a is a compute
ratio, 1 + mean k x (one teacher forward / one student step), mean k = 192/63
for pool 0-5, diluted by what each run costs besides training (set-up, the
final test pass, the record), the same both ways. The "training alone" line
sums the records' epochs less their test passes: the ratio long runs tend to.

``--task digits`` (the default) needs nothing but is 8x8, where a ResNet-110
forward is cheap next to a ResNet-20 step; ``--task fashion-mnist`` (Debian's
files, 28x28 like CIFAR's 32x32) is the paper-shaped workload; keep it small
with ``--train-subset``/``--test-subset`` on a CPU (its 50-view dump is 6 x 50
teacher forwards per image).

Usage: python bench/sweep.py [--task digits] [--pool 0-5] [--epochs 1] [--workdir DIR]
       python bench/sweep.py --task fashion-mnist --train-subset 512 --test-subset 256 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from mtd_cache.core.indices import parse_index_set
from mtd_cache.store import TeacherStore
from mtd_cache.sweeps.execute import SweepConfig, run_sweep
from mtd_cache.teachers import train_teachers
from mtd_cache.teachers.dump import run_dump


def training_seconds(out: str) -> float:
    """The runs' epochs less their test passes, summed over the records in ``out``: what long runs scale."""
    records = (json.loads(p.read_text()) for p in Path(out).glob("*/*/*.json"))
    return sum(row["epoch_s"] - row.get("eval_s", 0.0) for rec in records for row in rec["history"])


def timed_sweep(cfg: SweepConfig, workers: int) -> tuple[float, int]:
    shutil.rmtree(cfg.out, ignore_errors=True)
    t0 = time.perf_counter()
    results = run_sweep(cfg, workers=workers)
    return time.perf_counter() - t0, len(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits", choices=("digits", "fashion-mnist", "cifar10"))
    ap.add_argument("--data-dir", help="where the task's files are (default: the task's own)")
    ap.add_argument("--train-subset", type=int, help="first N training images only")
    ap.add_argument("--test-subset", type=int, help="score on the first N test images only")
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--pool", default="0-5", help="teacher pool (0-3 for a quicker run)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per student run")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mtd-bench" / "sweep")
    args = ap.parse_args()
    root = args.workdir / args.task
    subset = {"train_subset": args.train_subset}
    t0 = time.perf_counter()
    train_teachers(args.task, range(6), root / "teachers", "resnet110", args.data_dir,
                   {"epochs": args.teacher_epochs, "batch_size": 256, **subset})
    t1 = time.perf_counter()
    reused = (root / "store.h5").exists()  # kept from an earlier run: its dump's cost is not known here
    store = run_dump(args.task, root / "teachers", root / "store.h5", [],
                     {**subset, "test_subset": args.test_subset, "data_dir": args.data_dir})
    dump_s = None if reused else time.perf_counter() - t1
    with TeacherStore.open(store) as s:
        shape = f"{s.num_examples} images x {s.num_views} views, {len(s.dev_labels)} test images"
    print(f"(6 ResNet-110 teachers {t1 - t0:.0f} s; store of {shape}: "
          f"{'reused' if reused else f'dump {dump_s:.0f} s'})")
    base = dict(stores=(str(store),), student="resnet20", pool=parse_index_set(args.pool), repeats=1,
                overrides={"epochs": args.epochs}, data_dir=args.data_dir)
    a, n = timed_sweep(SweepConfig(**base, out=str(root / "runs-a")), 1)
    b, _ = timed_sweep(SweepConfig(**base, out=str(root / "runs-b")), 2)
    c, _ = timed_sweep(SweepConfig(**base, out=str(root / "runs-c"), teachers_dir=str(root / "teachers")), 1)
    print(f"sweep of {n} ResNet-20 runs (pool {args.pool}, {args.epochs} epochs each, {args.task}, {shape}, "
          f"6 ResNet-110 teachers):")
    print(f"  (a) store, 1 worker     {a:8.1f} s")
    print(f"  (b) store, 2 workers    {b:8.1f} s   a/b = {a / b:.2f}")
    print(f"  (c) online, 1 worker    {c:8.1f} s   c/a = {c / a:.2f} (goal >= 5)")
    ta, tc = training_seconds(str(root / "runs-a")), training_seconds(str(root / "runs-c"))
    print(f"  training alone          {ta:8.1f} s vs {tc:.1f} s online: {tc / ta:.2f} (what c/a tends to as runs "
          f"lengthen; the rest of a run, set-up, test pass and record, costs the same both ways)")
    if dump_s is not None:
        print(f"  the dump                {dump_s:8.1f} s   c/(a + dump) = {c / (a + dump_s):.2f} "
              f"(this one sweep paying for the whole store)")


if __name__ == "__main__":
    main()
