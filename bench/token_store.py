#!/usr/bin/env python
"""The token store on a real corpus: six tiny seeded language-model teachers, their sparse multi-teacher cache.

Debian's ``fortunes`` (plain text, found under /usr/share/games/fortunes; else the SST-2 sentences of
../shared/data/glue) is tokenised by a byte-level BPE trained on it (``tokenizers``, 2,048 ids), cut into
blocks of 64 tokens; six GPT-2-shaped models from a random config (2 layers x 128, seeds 0-5) train on the
blocks (AdamW, warm-up then cosine), each scored on held-out blocks in perplexity beside the unigram
distribution's; then ``store.tokens.write_token_store`` dumps the training blocks with k = 32 and the dense
check. Prints the bytes per position and teacher, |U| / k (how much the seeds' top-k sets overlap), the dense
check's worst errors and the dump's throughput.

Usage: python bench/token_store.py [--blocks 200] [--steps 300] [--k 32]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VOCAB, BLOCK = 2048, 64
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def corpus() -> tuple[str, str]:
    root = Path("/usr/share/games/fortunes")
    files = sorted(p for p in root.glob("*") if p.is_file() and p.suffix == "" and not p.is_symlink()) \
        if root.is_dir() else []
    if files:
        return "\n".join(p.read_text(errors="replace").replace("\n%\n", "\n\n") for p in files), str(root)
    sst = SHARED / "SST-2" / "train.tsv"
    if sst.exists():
        return "\n".join(line.split("\t")[0] for line in sst.read_text().splitlines()[1:]), str(sst)
    raise SystemExit("token_store: no corpus here (Debian's fortunes, or ../shared/data/glue/SST-2)")


def tokenizer(text: str):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([text[i:i + 4096] for i in range(0, len(text), 4096)], vocab_size=VOCAB,
                            min_frequency=2, show_progress=False)
    return tok


def teacher(seed: int, blocks: torch.Tensor, steps: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=128, n_layer=2, n_head=4,
                                       bos_token_id=0, eos_token_id=0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 *
                                              (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (16,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def perplexity(model, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(float(model(input_ids=blocks, labels=blocks).loss))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=200, help="training blocks dumped")
    ap.add_argument("--steps", type=int, default=300, help="training steps per teacher")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--teachers", type=int, default=6)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mtd_cache.store.token_writer import write_token_store
    from mtd_cache.store.tokens import TokenStore

    text, source = corpus()
    tok = tokenizer(text)
    ids = np.asarray(tok.encode(text).ids, dtype=np.int64)
    n_blocks = len(ids) // BLOCK
    blocks = torch.from_numpy(ids[:n_blocks * BLOCK].reshape(n_blocks, BLOCK))
    held = blocks[-100:]
    train = blocks[:-100]
    counts = np.bincount(train.reshape(-1).numpy(), minlength=VOCAB) + 1
    unigram = math.exp(-float((np.log(counts / counts.sum())[held.reshape(-1).numpy()]).mean()))
    print(f"corpus {source}: {len(ids):,} tokens ({VOCAB} BPE ids), {n_blocks} blocks of {BLOCK}; unigram "
          f"perplexity on 100 held-out blocks {unigram:.1f}")
    models = []
    for seed in range(args.teachers):
        t0 = time.perf_counter()
        m = teacher(seed, train, args.steps)
        models.append(m)
        print(f"  teacher seed {seed}: held-out perplexity {perplexity(m, held):.1f} "
              f"({args.steps} steps, {time.perf_counter() - t0:.0f} s)", flush=True)
    fns = [lambda x, m=m: m(input_ids=x).logits for m in models]
    with tempfile.TemporaryDirectory(prefix="token_store.") as tmp:
        dump = write_token_store(Path(tmp) / "tokens.h5", train[:args.blocks].tolist(), fns, k=args.k,
                                 temperatures=(1.0, 2.0, 4.0), vocab_size=VOCAB, dense_check=True)
        with TokenStore.open(dump.path) as store:
            per = store.bytes_per_token()
        print(f"token store: {dump.positions:,} positions, {args.teachers} teachers, k = {args.k}: |U| mean "
              f"{dump.mean_width:.1f} = {dump.mean_width / args.k:.2f} k (of at most {args.teachers} k), "
              f"{per:.0f} bytes per position and teacher; dump {dump.positions / dump.wall_s:,.0f} positions/s "
              f"with the exhaustive dense check of every subset ({dump.wall_s:.0f} s)")
        print(f"dense check: mean of probabilities max |error| {dump.dense_check['mean_probs']:.2e}; mean of logits: "
              f"a true tail beyond its bound by at most {dump.dense_check['mean_logits_outside_bound']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
