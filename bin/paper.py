#!/usr/bin/env python
"""`make paper`: the paper's protocol (``mtd_cache.sweeps.paper``), every step printed and run in order.

    make paper DRY_RUN=1                   # every step, its store and its run counts; nothing run or built
    make paper TASKS=mrpc REPEATS=3        # one task; re-running skips what is done
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def main(argv: list[str] | None = None) -> int:
    from mtd_cache.core.errors import MtdError
    from mtd_cache.sweeps import work
    from mtd_cache.sweeps.paper import TASKS, paper_steps

    p = argparse.ArgumentParser(description="The paper's protocol: teachers, stores, sweeps, report.")
    p.add_argument("--dry-run", action="store_true", help="print every step and its run counts; run nothing")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--students", default=None, help="only these students (resnet20, distilbert, tinybert)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seeds", default="0-5")
    p.add_argument("--pool", default="0-5")
    p.add_argument("--model", default=None, help="teacher model (default: each task's, the paper's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: each recipe's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of each student run (mtd-sweep)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="student setting KEY=VALUE")
    p.add_argument("--tflops", type=float, default=None,
                   help="sustained training TFLOP/s of the machine that will run it, for the time estimates "
                        "(default: this machine's measured matmul rate x 0.4)")
    args = p.parse_args(argv)
    if args.tflops is not None and not 0 < args.tflops < float("inf"):
        print(f"paper: error: --tflops {args.tflops}: expected a rate above 0 (TFLOP/s)", file=sys.stderr)
        return 2
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    students = tuple(args.students.split(",")) if args.students else None
    if args.model and "cifar10" in tasks and len(tasks) > 1:
        print("paper: error: --model names one teacher model for every task: give --tasks of one kind (cifar10, "
              "or GLUE tasks)", file=sys.stderr)
        return 2
    try:
        steps = paper_steps(tasks, students, args.repeats, args.workers, args.seeds, args.pool, args.model,
                            args.data_dir, args.epochs, tuple(args.sets), threads=args.threads)
    except MtdError as exc:
        print(f"paper: error: {exc}", file=sys.stderr)
        return 2
    rate, rate_text = work.rate_of(args.tflops)
    counted = [st.flops for st in steps if st.flops is not None]
    unknown = len(steps) - len(counted) - 1  # the report: seconds, not counted
    about = "<=" if any(st.bound for st in steps) else "~"
    print(f"estimate: {about}{work.flops_text(sum(counted))} in all, {about}{work.span(sum(counted) / rate)} at "
          f"{rate_text}" + (f"; {unknown} steps not counted" if unknown > 0 else "") +
          ("; <=: text counted at 128 tokens per example" if about == "<=" else ""), flush=True)
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step.what}" + (f": {step.plan}" if step.plan else "") +
              f" [{work.step_line(step.flops, rate, step.bound)}]", flush=True)
        print("    $ " + " ".join(step.argv), flush=True)
        if not args.dry_run:
            rc = subprocess.run([str(BIN / step.argv[0]), *step.argv[1:]]).returncode
            if rc != 0:
                print(f"paper: step {i} failed (exit status {rc}): {' '.join(step.argv)}", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
