#!/usr/bin/env python
"""Students x steps per second of a sweep's engines on one device: a pack of S students per process, N processes
sharing the device, one student per process.

Rows, each the steps of real training (forward, loss, backward, SGD step), random weights and pixels:

* image, 1 per process: a run alone's step, ResNet-20 at batch 128 on CIFAR-shaped 32x32 images: the batch
  built on the device from the images and their views, the store's gather of its teachers' mean logits (k = 6
  of a CIFAR-like store), its objective (CE + KD, the recipe's settings).
* image, pack of S: a pack's step (``students.pack``): one batch, one gather of the S students' targets
  (``TeacherStore.mean_logits_many``), the S stacked models (``models.stacked.Stacked``), each student's objective;
  S = 1, 2, 4, 8, 16, 32, each student a different teacher subset.
* image, N processes: N processes each stepping one student at once on the same device (``mtd-sweep --workers N``
  on one GPU): their summed rate.
* text, 1 per process and N processes: a DistilBERT-shaped student (6 layers x 768, 128 tokens, batch 32), CE + KD.
* text, pack of S: the stacked engine on the text model, where ``vmap`` runs it (else "n/a" and why).

Each row: students x steps per second (the median of three blocks, the engines' blocks interleaved so all see the
same machine), the ratio to the 1-per-process row of
its model, and on a GPU the peak memory and the GPU's mean utilisation (NVML, when ``pynvml`` is installed).
On the CPU (or with --small) the sizes shrink (ResNet-8 at batch 32, S up to 8, text 2 layers x 64, 32 tokens,
batch 8) and the table is the same: expect no speed-up there, the convolutions being compute-bound.

Usage: python bench/sweep_gpu.py [--device cpu|cuda] [--steps N] [--students 1,2,4] [--processes 1,2] [--small]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from itertools import combinations
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def sizes(small: bool) -> dict:
    if small:
        return {"resnet": "resnet8", "batch": 32, "students": [1, 2, 4, 8], "processes": [1, 2],
                "text": {"dim": 64, "n_layers": 2, "n_heads": 2, "hidden_dim": 128}, "tokens": 32, "text_batch": 8}
    return {"resnet": "resnet20", "batch": 128, "students": [1, 2, 4, 8, 16, 32], "processes": [1, 2, 4, 8],
            "text": {"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072}, "tokens": 128, "text_batch": 32}


# ----------------------------------------------------------------------------- the steps


def image_engine(students: int | None, cfg: dict, dev: torch.device, workdir: Path):
    """One step function: a run alone (``students`` None) or a pack of ``students``, as the recipe builds them."""
    from kd_step import N, cifar_like_store  # bench/kd_step.py

    from mtd_cache.models.resnet_cifar import build_resnet
    from mtd_cache.models.stacked import Stacked
    from mtd_cache.students import objective
    from mtd_cache.students.recipes import image_kd
    from mtd_cache.students.selection import select
    from mtd_cache.students.targets import TeacherOutputs
    from mtd_cache.tasks.image_data import ImageData
    from mtd_cache.tasks.images import get_image_task, view_table

    task = get_image_task("cifar10")
    views_np = view_table(task)
    store = cifar_like_store(workdir / "sweep_gpu_cifar.h5", views_np)
    rng = torch.Generator().manual_seed(0)
    data = ImageData(task, torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=rng).to(dev),
                     torch.randint(0, 10, (N,), generator=rng).to(dev))
    views = torch.as_tensor(views_np, device=dev)
    s = image_kd.Settings.resolve({}).settings
    subsets = [c for k in range(1, 7) for c in combinations(range(6), k)]
    chosen = [subsets[i % len(subsets)] for i in range(students or 1)]
    losses = [objective.Objective.of(s, objective.KD(s, select(t, None, 6, s)), teachers=True) for t in chosen]
    net = build_resnet(cfg["resnet"])
    model = (Stacked(net, students) if students else net).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    b = cfg["batch"]

    def step():
        idx = torch.randint(0, N, (b,), generator=rng)
        v = torch.randint(0, len(views), (b,), generator=rng)
        x = data.batch(idx.to(dev, non_blocking=True), views[v.to(dev, non_blocking=True)])
        labels = data.labels[idx.to(dev, non_blocking=True)]
        if students:
            z = torch.from_numpy(store.mean_logits_many(chosen, idx.numpy(), v.numpy()))
            z = (z.pin_memory() if dev.type == "cuda" else z).to(dev, non_blocking=True)
            logits = model(x)
            loss = sum(f(objective.StudentOut(logits=logits[i], labels=labels), TeacherOutputs(logits=z[i]))["loss"]
                       for i, f in enumerate(losses))
        else:
            z = torch.from_numpy(store.mean_logits(chosen[0], idx.numpy(), v.numpy())).to(dev, non_blocking=True)
            loss = losses[0](objective.StudentOut(logits=model(x), labels=labels), TeacherOutputs(logits=z))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class _Logits(torch.nn.Module):
    """A sequence classifier as one tensor in (token ids), one out (logits): what ``Stacked`` calls."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits


def text_engine(students: int | None, cfg: dict, dev: torch.device, workdir: Path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from mtd_cache.core.losses import hard_ce, kd_loss
    from mtd_cache.models.stacked import Stacked

    torch.manual_seed(0)
    conf = DistilBertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2, **cfg["text"])
    net = _Logits(DistilBertForSequenceClassification(conf))
    model = (Stacked(net, students) if students else net).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    b, n = cfg["text_batch"], cfg["tokens"]
    amp = dev.type == "cuda"

    def step():
        ids = torch.randint(0, 30522, (b, n), device=dev)
        labels = torch.randint(0, 2, (b,), device=dev)
        target = torch.randn(students or 1, b, 2, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(ids)
        logits = logits.float() if students else logits.float()[None]
        loss = sum(hard_ce(logits[i], labels) + kd_loss(logits[i], target[i], 2.0) for i in range(len(logits)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


ENGINES = {"image": image_engine, "text": text_engine}


# ----------------------------------------------------------------------------- timing


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


class Utilisation:
    """The GPU's utilisation sampled every 50 ms (NVML) while it runs, each sample filed under the engine being
    timed (``current``); nothing without pynvml or a GPU."""

    def __init__(self, dev: torch.device):
        self.samples: dict[str, list[int]] = {}
        self.current: str | None = None
        self.handle = None
        if dev.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle, self.nvml = pynvml.nvmlDeviceGetHandleByIndex(dev.index or 0), pynvml
            except Exception:  # noqa: BLE001 - no NVML: no utilisation column
                self.handle = None

    def __enter__(self):
        self.stop = threading.Event()
        if self.handle is not None:
            def sample():
                while not self.stop.wait(0.05):
                    if self.current is not None:
                        rate = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
                        self.samples.setdefault(self.current, []).append(rate)
            threading.Thread(target=sample, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()

    def mean(self, name: str) -> float | None:
        got = self.samples.get(name)
        return statistics.fmean(got) if got else None


def peak_of(kind: str, students: int | None, cfg: dict, dev: torch.device, workdir: Path) -> int | None:
    """The GPU bytes two steps of one engine allocate at their peak, built alone; None off CUDA."""
    if dev.type != "cuda":
        return None
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step = ENGINES[kind](students, cfg, dev, workdir)
    for _ in range(2):
        step()
    _sync(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    del step
    torch.cuda.empty_cache()
    return int(peak)


def measure(kind: str, packs: list[int], cfg: dict, dev: torch.device, steps: int, workdir: Path,
            rounds: int = 3) -> dict[str, dict]:
    """Every in-process engine of ``kind`` (one student per process, packs of each size), timed side by side: the
    engines' blocks of ``steps`` steps interleaved over ``rounds`` rounds, each engine's median seconds per step,
    so that all see the same machine. Per engine: students x steps per second, peak memory, utilisation."""
    engines: dict[str, tuple[int | None, object]] = {}
    results: dict[str, dict] = {}
    for s in [None, *packs]:
        name = "1 per process" if s is None else f"pack of {s}"
        try:
            peak = peak_of(kind, s, cfg, dev, workdir)
            step = ENGINES[kind](s, cfg, dev, workdir)
            for _ in range(2):  # warm-up
                step()
            engines[name] = (s, step)
            results[name] = {"peak": peak}
        except Exception as exc:  # noqa: BLE001 - a model vmap cannot run, or memory: said in its row
            results[name] = {"error": " ".join(str(exc).split())[:90]}
    times: dict[str, list[float]] = {name: [] for name in engines}
    with Utilisation(dev) as util:
        for _ in range(rounds):
            for name, (_, step) in engines.items():
                util.current = name
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                _sync(dev)
                times[name].append((time.perf_counter() - t0) / steps)
                util.current = None
    for name, (s, _) in engines.items():
        results[name].update(rate=(s or 1) / statistics.median(times[name]), util=util.mean(name))
    return results


def _worker(kind, cfg, device, steps, workdir, threads, start, out):
    torch.set_num_threads(threads)
    dev = torch.device(device)
    step = ENGINES[kind](None, cfg, dev, Path(workdir))
    for _ in range(2):
        step()
    start.wait()  # every process starts its timed steps together
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out.put((t0, time.perf_counter()))


def processes(kind: str, n: int, cfg: dict, dev: torch.device, steps: int, workdir: Path) -> dict:
    """N processes, one student each, stepping at once on the device: students x steps per second together."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n), ctx.Queue()
    threads = max(1, torch.get_num_threads() // n) if dev.type == "cpu" else 1
    procs = [ctx.Process(target=_worker, args=(kind, cfg, str(dev), steps, str(workdir), threads, start, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    spans = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    wall = max(b for _, b in spans) - min(a for a, _ in spans)
    return {"rate": n * steps / wall, "peak": None, "util": None}


def row(name: str, got: dict, base: float | None) -> str:
    if "error" in got:
        return f"  {name:<26} n/a ({got['error']})"
    ratio = f"{got['rate'] / base:6.2f}x" if base else "   1.00x"
    peak = f"{got['peak'] / 2**30:7.2f} GiB" if got.get("peak") else "        -  "
    util = f"{got['util']:5.0f}%" if got.get("util") is not None else "    -"
    return f"  {name:<26} {got['rate']:16.1f} {ratio} {peak} {util}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, help="timed steps per block (default 20 on a GPU, 8 on the CPU)")
    ap.add_argument("--students", help="pack sizes, comma-separated (default 1,2,4,8,16,32; CPU 1,2,4,8)")
    ap.add_argument("--processes", help="processes per device, comma-separated (default 1,2,4,8; CPU 1,2)")
    ap.add_argument("--small", action="store_true", help="the CPU's small sizes on any device")
    ap.add_argument("--only", choices=sorted(ENGINES), help="one model only")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mtd-bench")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cfg = sizes(args.small or dev.type == "cpu")
    steps = args.steps or (20 if dev.type == "cuda" else 8)
    packs = [int(x) for x in args.students.split(",")] if args.students else cfg["students"]
    procs = [int(x) for x in args.processes.split(",")] if args.processes else cfg["processes"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_properties(dev).name if dev.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    print(f"sweep engines on {name}, torch {torch.__version__}; {steps} steps x 3 blocks per row")
    for kind in [args.only] if args.only else list(ENGINES):
        what = f"{cfg['resnet']}, batch {cfg['batch']}, 32x32" if kind == "image" else \
            f"DistilBERT-shaped {cfg['text']['n_layers']} x {cfg['text']['dim']}, {cfg['tokens']} tokens, " \
            f"batch {cfg['text_batch']}"
        print(f"\n{kind}: {what}\n  {'engine':<26} {'students*steps/s':>16} {'ratio':>7} {'peak':>11} {'util':>5}")
        got = measure(kind, packs, cfg, dev, steps, args.workdir)
        base = got["1 per process"]
        for name, one in got.items():
            print(row(name, one, None if one is base else base.get("rate")), flush=True)
        for n in procs:
            if n > 1:
                print(row(f"{n} processes x 1", processes(kind, n, cfg, dev, steps, args.workdir), base.get("rate")),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
