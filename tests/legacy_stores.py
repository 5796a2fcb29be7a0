"""Stores with fixed metadata (no trained teachers, no data files) whose run ids are pinned.

``tests/data/legacy_run_ids.json`` holds the run ids and TinyBERT stage-1 ids that
mtd-cache computed at commit a72e07b (before the pipeline redesign) for the sweeps
of ``SWEEPS`` over these stores. A run id hashes the resolved configuration, the
store's fingerprint and the teachers' hashes, none of which needs data or weights,
so a runs folder written by that commit resumes with zero re-runs exactly when the
ids still match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtd_cache.store import PrimarySpec, StoreSpec, StoreWriter

N, T = 4, 3
SHAS = tuple(c * 64 for c in "abc")
DIGIT_VIEWS = np.array([(dy, dx, 0) for dy in range(3) for dx in range(3)], dtype=np.int16)

# (name, store kind, student, overrides): the sweeps whose ids are pinned
SWEEPS = [
    ("resnet8-default", "image", "resnet8", {}),
    ("resnet20-overrides", "image", "resnet20", {"epochs": 3, "temperature": 4, "lr": 0.05}),
    ("distilbert-default", "text", "distilbert", {}),
    ("distilbert-init", "text", "distilbert", {"init_from_teacher": True, "student_layers": 3, "epochs": 1}),
    ("tinybert-2l", "text", "tinybert", {"student_layers": 2, "init_from_teacher": True}),
    ("tinybert-select", "text", "tinybert", {"student_layers": 3, "select_on_dev": True, "ild_epochs": 2}),
]


def image_store(path: Path) -> Path:
    """A 'digits' store: 4 examples x 9 views x 3 teachers x 10 classes, fixed fingerprint and hashes."""
    spec = StoreSpec(task="digits", metric="accuracy", label_names=tuple(str(d) for d in range(10)), num_examples=N,
                     num_teachers=T, num_views=len(DIGIT_VIEWS), num_dev=2, fingerprint="1" * 64,
                     teacher_model="resnet20", teacher_seeds=(0, 1, 2), teacher_paths=("/t/0", "/t/1", "/t/2"),
                     teachers_sha256=SHAS, extra={"data_dir": None, "train_subset": None, "test_subset": None})
    w = StoreWriter.open(path, spec)
    rng = np.random.default_rng(0)
    for t in range(T):
        w.put_logits(t, 0, rng.normal(size=(N, len(DIGIT_VIEWS), 10)).astype(np.float32))
        w.put_dev(t, rng.normal(size=(2, 10)).astype(np.float32), 0.5)
    w.put("examples/label", np.arange(N) % 10)
    w.put("views", DIGIT_VIEWS)
    w.put("dev/label", np.array([0, 1]))
    return w.finish()


def text_store(path: Path) -> Path:
    """An 'mrpc' store of 6-layer teachers with primary 0's TinyBERT states for layers 0, 2, 3, 4, 6."""
    hidden_layers, attn_layers = (0, 2, 3, 4, 6), (2, 3, 4, 6)
    prim = PrimarySpec(hidden_size=8, hidden_layers=hidden_layers, attn_layers=attn_layers, num_heads=2)
    spec = StoreSpec(task="mrpc", metric="accuracy", label_names=("0", "1"), num_examples=N, num_teachers=T,
                     num_dev=2, fingerprint="2" * 64, teacher_model="bert", teacher_seeds=(0, 1, 2),
                     teacher_paths=("/t/0", "/t/1", "/t/2"), teachers_sha256=SHAS, primaries={0: prim},
                     extra={"tokenizer": {"name": "tok", "sha256": "3" * 64}, "max_length": 128,
                            "train_subset": None, "data_dir": "/data", "augmented": None, "num_layers": 6,
                            "batch_size": 64, "chunk": 2048})
    w = StoreWriter.open(path, spec)
    rng = np.random.default_rng(1)
    lengths = np.array([3, 5, 2, 4])
    for t in range(T):
        w.put_logits(t, 0, rng.normal(size=(N, 2)).astype(np.float32))
        w.put_dev(t, rng.normal(size=(2, 2)).astype(np.float32), 0.5)
    hidden = rng.normal(size=(int(lengths.sum()) * len(hidden_layers), 8)).astype(np.float16)
    attn = rng.normal(size=(int((lengths ** 2).sum()) * len(attn_layers) * 2,)).astype(np.float16)
    w.put_primary(0, 0, lengths, hidden, attn)
    w.put("examples/label", np.array([0, 1, 1, 0]))
    w.put("dev/label", np.array([0, 1]))
    return w.finish()
