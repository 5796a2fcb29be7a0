"""A corpus a tiny language model learns in seconds, its task file, and a tiny GPT-2 random config over it."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "one two three four five six seven eight nine ten".split()


def write_corpus(root: Path, n_train: int = 240, n_dev: int = 40, seed: int = 0) -> Path:
    """Counting documents ("four five six seven ..."): each word predicts the next, so a model that learns any
    context beats the unigram distribution by far. Writes train.txt, dev.txt and counting.json (block 24)."""
    rng = random.Random(seed)

    def doc() -> str:
        start, length = rng.randrange(10), rng.randrange(4, 14)
        return " ".join(WORDS[(start + i) % 10] for i in range(length)) + "."

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n\n".join(doc() for _ in range(n_train)) + "\n")
    (root / "dev.txt").write_text("\n\n".join(doc() for _ in range(n_dev)) + "\n")
    task = root / "counting.json"
    task.write_text(json.dumps({"name": "counting", "kind": "lm", "train": "train.txt", "dev": "dev.txt",
                                "block_size": 24}))
    return task


def tiny_lm(root: Path, corpus: Path, width: int = 32) -> Path:
    from mtd_cache.models.tiny_lm import make_tiny_lm

    text = (corpus.parent / "train.txt").read_text()
    return make_tiny_lm(root, [text], vocab_size=300, layers=1, width=width, heads=2, positions=64)
