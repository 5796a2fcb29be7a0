#!/usr/bin/env python
"""One ResNet-20 student training step, batch 128, 32x32 inputs (CIFAR-10 shapes):

(a) CE only; (b) KD from the store, k = 6 (the gather of the cached view logits
included); (c) KD from six ResNet-110 teachers run online on the same batch.
Prints the median step time of each and the ratios b/a (goal <= 1.05) and
c/b (expected >= 10). Random weights and pixels: only the cost is measured.

Usage: python bench/kd_step.py [--steps 20] [--device cpu|cuda] [--workdir DIR]
The BERT-student rows are bench/kd_step_bert.py (``make bench`` runs both).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtd_cache.core.losses import kd_loss
from mtd_cache.models.resnet_cifar import build_resnet
from mtd_cache.store import StoreSpec, StoreWriter, TeacherStore
from mtd_cache.tasks.image_data import ImageData
from mtd_cache.tasks.images import get_image_task, view_table

N, B, T = 5_000, 128, 6


def cifar_like_store(path: Path, views: np.ndarray) -> TeacherStore:
    if not path.exists():
        spec = StoreSpec(task="cifar10", metric="accuracy", label_names=tuple(map(str, range(10))), num_examples=N,
                         num_teachers=T, fingerprint="bench", num_views=len(views), logits_dtype="float16")
        w = StoreWriter.open(path, spec)
        rng = np.random.default_rng(0)
        for t in range(T):
            w.put_logits(t, 0, rng.standard_normal((N, len(views), 10), dtype=np.float32))
        w.put("examples/label", np.zeros(N, dtype=np.int64))
        w.put("views", views)
        w.finish()
    return TeacherStore.open(path, check_finite=False)


def interleaved(steps: dict, rounds: int, device: torch.device, every: dict) -> dict[str, float]:
    """Median seconds per step of each variant, measured round-robin so that all see the same load."""
    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for fn in steps.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, fn in steps.items():
            if r % every.get(name, 1) == 0:
                times[name].append(once(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mtd-bench")
    args = ap.parse_args()
    dev = torch.device(args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    task = get_image_task("cifar10")
    views_np = view_table(task)
    store = cifar_like_store(args.workdir / "kd_step_cifar.h5", views_np)
    rng = torch.Generator().manual_seed(0)
    data = ImageData(task, torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=rng).to(dev),
                     torch.randint(0, 10, (N,), generator=rng).to(dev))
    views = torch.as_tensor(views_np, device=dev)
    student = build_resnet("resnet20").to(dev)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    teachers = [build_resnet("resnet110").to(dev).eval() for _ in range(T)]

    def batch():
        idx = torch.randint(0, N, (B,), generator=rng)
        v = torch.randint(0, len(views), (B,), generator=rng)
        return idx, v, data.batch(idx.to(dev), views[v.to(dev)])

    def train(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def ce_step():
        idx, v, x = batch()
        train(F.cross_entropy(student(x), data.labels[idx.to(dev)]))

    def cached_step():
        idx, v, x = batch()
        target = torch.from_numpy(store.mean_logits(range(T), idx.numpy(), v.numpy())).to(dev)
        logits = student(x)
        train(F.cross_entropy(logits, data.labels[idx.to(dev)]) + kd_loss(logits, target, 4.0))

    def online_step():
        idx, v, x = batch()
        with torch.no_grad():
            target = torch.stack([t(x) for t in teachers]).mean(0)
        logits = student(x)
        train(F.cross_entropy(logits, data.labels[idx.to(dev)]) + kd_loss(logits, target, 4.0))

    med = interleaved({"a": ce_step, "b": cached_step, "c": online_step}, args.steps, dev, {"c": 4})
    a, b, c = med["a"], med["b"], med["c"]
    print(f"ResNet-20 step, batch {B}, 32x32, {dev} ({torch.get_num_threads()} threads):")
    print(f"  (a) CE only                 {a * 1e3:9.1f} ms")
    print(f"  (b) cached KD, k = 6        {b * 1e3:9.1f} ms   b/a = {b / a:.3f} (goal <= 1.05)")
    print(f"  (c) online KD, 6 ResNet-110 {c * 1e3:9.1f} ms   c/b = {c / b:.1f} (expected >= 10)")


if __name__ == "__main__":
    main()
