#!/usr/bin/env python
"""The GPU check: one script to run when a GPU is lent (a few minutes; prints medians and ratios).

1. The ResNet-20 student step, batch 128, CIFAR shapes: CE only, cached KD k = 6, online KD k = 6
   (``bench/kd_step.py --device cuda``).
2. A DistilBERT-size (MiniLM 6 x 384) student step from the store, bf16 autocast, beside CE only and
   six teachers online (``bench/kd_step_bert.py --device cuda``).
3. The store gather (batch 128, k = 6, CIFAR-like 162-view store, float16) into pinned memory and onto
   the GPU, beside a pageable copy.
4. Students x steps per second of the sweep's engines: packs of S = 1..32 students per process, N processes
   per GPU, one student per process; ResNet-20 at batch 128 and a DistilBERT-shaped student
   (``bench/sweep_gpu.py --device cuda``; the goal: a pack >= 5x one student per process for ResNet-20).
5. A digits sweep on one GPU: three ResNet-20 teachers, their store, the ResNet-8 sweep of the 3-teacher
   pool (8 runs), timed end to end, then again with ``--students-per-process auto``.

Without a CUDA GPU it prints one line saying so and exits 0 (``make bench`` runs it everywhere).
Usage: python bench/gpu_check.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def run(args: list[str], what: str) -> float:
    """Run a command, echo its output, and return its wall time."""
    print(f"\n== {what}\n$ {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(r.stdout.strip() or "", flush=True)
    tail = [line for line in r.stderr.splitlines() if "it/s]" not in line and "s/it]" not in line]
    if r.returncode != 0:
        print("\n".join(tail[-15:]), flush=True)
        raise SystemExit(f"gpu_check: {what} failed (exit status {r.returncode})")
    print("\n".join(line for line in tail if line.startswith(("MiniLM", "ce ", "cached", "online", "paired"))),
          flush=True)  # kd_step_bert.py logs its figures to stderr
    return wall


def gather(quick: bool) -> None:
    """Store gather -> pinned host memory -> GPU, beside a pageable host copy -> GPU."""
    sys.path.insert(0, str(HERE))
    from kd_step import cifar_like_store  # bench/kd_step.py

    from mtd_cache.tasks.images import get_image_task, view_table

    views = view_table(get_image_task("cifar10"))
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        store = cifar_like_store(Path(tmp) / "s.h5", views)
        rng = torch.Generator().manual_seed(0)
        pinned = torch.empty((128, 10), dtype=torch.float32).pin_memory()
        dev = torch.device("cuda")

        def step(pin: bool) -> float:
            idx = torch.randint(0, store.num_examples, (128,), generator=rng).numpy()
            v = torch.randint(0, len(views), (128,), generator=rng).numpy()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            z = torch.from_numpy(store.mean_logits(range(6), idx, v))
            if pin:
                pinned.copy_(z)
                out = pinned.to(dev, non_blocking=True)
            else:
                out = z.to(dev)
            torch.cuda.synchronize()
            assert out.shape == (128, 10)
            return time.perf_counter() - t0

        reps = 200 if quick else 2000
        for pin in (False, True):
            step(pin)
        times = {pin: [] for pin in (False, True)}
        for _ in range(reps):
            for pin in (False, True):
                times[pin].append(step(pin))
        med = {pin: statistics.median(ts) for pin, ts in times.items()}
        print("\n== store gather (batch 128, k = 6, 162 views, float16) onto the GPU")
        print(f"  pageable host copy: {med[False] * 1e6:8.1f} us (median of {reps})")
        print(f"  pinned host copy:   {med[True] * 1e6:8.1f} us   pinned / pageable = {med[True] / med[False]:.2f}")


def digits_sweep() -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_check_sweep.") as tmp:
        root = Path(tmp)
        t_teachers = run([str(BIN / "mtd-cache"), "teachers", "--task", "digits", "--model", "resnet20", "--seeds",
                          "0-2", "--epochs", "15", "--out", str(root / "teachers"), "--device", "cuda"],
                         "digits: three ResNet-20 teachers, 15 epochs")
        t_dump = run([str(BIN / "mtd-cache"), "dump", "--task", "digits", "--teachers-dir", str(root / "teachers"),
                      "--out", str(root / "s.h5"), "--device", "cuda"], "digits: the store")
        t_sweep = run([str(BIN / "mtd-sweep"), "--store", str(root / "s.h5"), "--student", "resnet8", "--pool",
                       "0-2", "--repeats", "1", "--epochs", "10", "--out", str(root / "runs"), "--device", "cuda"],
                      "digits: the ResNet-8 sweep of a 3-teacher pool (7 students + 1 CE-only)")
        t_auto = run([str(BIN / "mtd-sweep"), "--store", str(root / "s.h5"), "--student", "resnet8", "--pool",
                      "0-2", "--repeats", "1", "--epochs", "10", "--out", str(root / "runs-auto"), "--device", "cuda",
                      "--students-per-process", "auto"],
                     "digits: the same sweep, --students-per-process auto (its 8 runs in one pack)")
        print(f"\n== digits on one GPU: teachers {t_teachers:.0f} s, dump {t_dump:.0f} s, sweep {t_sweep:.0f} s "
              f"({t_sweep / 8:.1f} s per run, process start included); --students-per-process auto {t_auto:.0f} s "
              f"(S = 1 / auto = {t_sweep / t_auto:.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine: nothing measured (run it where a GPU is lent)")
        return 0
    props = torch.cuda.get_device_properties(0)
    print(f"gpu_check on {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    steps = "10" if args.quick else "40"
    run([sys.executable, str(HERE / "kd_step.py"), "--device", "cuda", "--steps", steps],
        "ResNet-20 step: CE, cached KD k = 6, online KD k = 6 ResNet-110")
    run([sys.executable, str(HERE / "kd_step_bert.py"), "--device", "cuda", "--steps", steps],
        "DistilBERT-size student step from the store, bf16")
    gather(args.quick)
    run([sys.executable, str(HERE / "sweep_gpu.py"), "--device", "cuda", "--steps", "5" if args.quick else "20"],
        "students x steps per second: a pack of S per process, N processes per GPU, one per process")
    digits_sweep()
    return 0


if __name__ == "__main__":
    sys.exit(main())
