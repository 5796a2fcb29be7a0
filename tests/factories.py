"""Test data and models made on the spot, shared by the test files: tiny tokenizers and BERTs, small GLUE-format
files, task files over CSV, JSONL and image folders, teachers pointing at them (no download, no network)."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from mtd_cache.core.hashing import sha256_file
from mtd_cache.students.record import experiment_identity, make_experiment_id
from mtd_cache.tasks.glue import read_split
from mtd_cache.teachers import Teacher

SHARED = Path(os.environ.get("MTD_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
GLUE_DIR = SHARED / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE_DIR / "MRPC").is_dir(), reason=f"no shared GLUE data at {GLUE_DIR}")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POS, NEG = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "dull"]
FILLER = ["the", "a", "movie", "film", "was", "plot", "very", "really", "it", "and", "actors", "story"]


# ----------------------------------------------------------------------------- text: tiny BERTs, small GLUE files


def make_tokenizer(folder: Path, texts: list[str], extra: tuple[str, ...] = ()):
    """A BERT WordPiece tokenizer whose vocabulary is the words of ``texts``."""
    from transformers import BertTokenizer

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())} | set(extra))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    tok = BertTokenizer(vocab=str(folder / "vocab.txt"))
    tok.save_pretrained(folder)
    return tok


def make_bert(folder: Path, texts: list[str], layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0,
              extra: tuple[str, ...] = ()) -> Path:
    """A random tiny BERT classifier (2 labels) and its tokenizer, saved to ``folder``."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = make_tokenizer(folder, texts, extra)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=128, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def write_sst2(root: Path, n_train: int = 96, n_dev: int = 48, seed: int = 0, all_negative: bool = False) -> Path:
    """A learnable SST-2-format task: label 1 iff the sentence has a positive word."""
    rng = random.Random(seed)

    def rows(n: int, negative_only: bool) -> list[str]:
        out = []
        for i in range(n):
            label = 0 if negative_only else i % 2
            words = rng.sample(FILLER, rng.randint(2, 9)) + [rng.choice(POS if label else NEG)]
            rng.shuffle(words)
            out.append(f"{' '.join(words)} .\t{label}")
        return out

    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text("\n".join(["sentence\tlabel", *rows(n_train, all_negative)]) + "\n")
    (folder / "dev.tsv").write_text("\n".join(["sentence\tlabel", *rows(n_dev, False)]) + "\n")
    return root


def sst2_words() -> list[str]:
    return [" ".join(POS + NEG + FILLER + ["."])]


def write_mrpc_slice(root: Path, n_train: int = 40, n_dev: int = 24) -> Path:
    """The first lines of the real MRPC files (header included) under ``root/MRPC``."""
    folder = root / "MRPC"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = (GLUE_DIR / "MRPC" / name).read_bytes().decode("utf-8").splitlines(keepends=True)
        (folder / name).write_bytes("".join(lines[:n + 1]).encode("utf-8"))
    return root


def mrpc_texts(data_dir: Path) -> list[str]:
    out = []
    for split in ("train", "dev"):
        s = read_split("mrpc", split, data_dir)
        out += s.text_a + s.text_b
    return out


def tiny_mrpc_teachers(root: Path, n_train: int, n_dev: int, seeds: tuple[int, ...],
                       layers: int = 2) -> tuple[Path, list[Teacher]]:
    """Tiny random BERT teachers, one per seed, on the first lines of the real MRPC files, under ``root``.

    Skips the calling test when the shared GLUE data is absent.
    """
    if not (GLUE_DIR / "MRPC").is_dir():
        pytest.skip(f"no shared GLUE data at {GLUE_DIR}")
    data = write_mrpc_slice(root / "glue", n_train, n_dev)
    texts = mrpc_texts(data)
    return data, [teacher_at(make_bert(root / f"seed{s}", texts, layers=layers, seed=s), s, data_dir=data)
                  for s in seeds]


def teacher_at(folder: Path, seed: int, task: str = "mrpc", data_dir: Path | None = None) -> Teacher:
    info = {"task": task, "seed": seed, "model": "tiny-bert", "sha256": sha256_file(folder / "model.safetensors"),
            "data_dir": None if data_dir is None else str(data_dir)}
    return Teacher(seed, folder, info)


# ----------------------------------------------------------------------------- task files


def task_file(folder: Path, filename: str, content: dict) -> Path:
    path = folder / filename
    path.write_text(json.dumps(content))
    return path


def reviews_task(folder: Path, fmt: str) -> Path:
    """A 3-class review task with other column names, as CSV (quoted commas) or JSONL."""
    rng = np.random.default_rng(0)
    words = {"bad": "1", "fine": "3", "great": "5"}
    for split, n in (("train", 60), ("dev", 18)):
        rows = [{"review": f"the film, it was {w}, {' '.join(rng.choice(['a', 'b', 'c'], 3))}", "stars": words[w],
                 "id": i} for i, w in enumerate(rng.choice(list(words), n))]
        if fmt == "csv":
            with open(folder / f"{split}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["id", "review", "stars"])
                w.writeheader()
                w.writerows(rows)
        else:
            (folder / f"{split}.jsonl").write_text("".join(json.dumps({**r, "stars": int(r["stars"])}) + "\n"
                                                           for r in rows))
    return task_file(folder, f"reviews.{fmt}.json", {"name": "reviews", "kind": "text", "train": f"train.{fmt}",
                                                     "dev": f"dev.{fmt}", "text_column": "review",
                                                     "label_column": "stars", "metric": "accuracy"})


def write_image_folders(root: Path, per_class: tuple[int, int] = (24, 8), size: int = 12) -> Path:
    """Three classes of small RGB PNGs (a bright square in one of three places, noise around)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class, strict=True):
        for c, name in enumerate(("left", "middle", "right")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                x[3:9, 1 + 4 * c:4 + 4 * c] = 240
                Image.fromarray(x).save(folder / f"{i:03d}.png")
    return task_file(root, "shapes.json", {"name": "shapes", "kind": "image", "train": "train", "dev": "val",
                                           "image_size": 12, "views": {"pad": 1, "flip": False}})


# ----------------------------------------------------------------------------- the commands

BIN = Path(sys.executable).parent


def cli(*args, env=None) -> subprocess.CompletedProcess:
    """``mtd-cache ARGS`` in a child process (the installed command)."""
    return subprocess.run([str(BIN / "mtd-cache"), *map(str, args)], capture_output=True, text=True, env=env)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The one line a refused command printed (asserting there is no traceback)."""
    lines = r.stderr.strip().splitlines()
    assert lines and "Traceback" not in r.stderr, r.stderr
    return lines[-1]


# ----------------------------------------------------------------------------- finished run records, by hand


RUN_EXAMPLES = M = 100  # evaluation examples of the records below


def experiment_of(temperature: float, store: str = "f" * 64) -> tuple[str, dict]:
    ident = experiment_identity("digits", "resnet8", {"temperature": temperature, "epochs": 1}, [store],
                                ["a" * 64, "b" * 64], False)
    return make_experiment_id(ident), ident


def write_run(root: Path, run_id: str, teachers: tuple[int, ...], seed: int, correct: np.ndarray,
              temperature: float = 4.0, keep_predictions: bool = True, **extra) -> None:
    """A finished record whose predictions are right exactly where ``correct`` is (labels: 0..9 cycling)."""
    folder = root / "digits" / "resnet8"
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(M) % 10
    pred = np.where(correct, labels, (labels + 1) % 10)
    exp, ident = experiment_of(temperature)
    rec = {"run_id": run_id, "kind": "student" if teachers else "baseline", "experiment": exp,
           "experiment_identity": ident, "task": "digits", "student": "resnet8", "teachers": list(teachers),
           "primary": None, "k": len(teachers), "seed": seed, "metric_name": "accuracy",
           "metric": float(correct.mean()), "wall_s": 1.0, "energy_j": None, "status": "done",
           "predictions": f"{run_id}.predictions.npz" if keep_predictions else None, **extra}
    if keep_predictions:
        np.savez(folder / f"{run_id}.predictions.npz", pred=pred.astype(np.int16), label=labels.astype(np.int16))
    (folder / f"{run_id}.json").write_text(json.dumps(rec))


def right(n: int, extra: tuple[int, ...] = ()) -> np.ndarray:
    """Right on the first ``n`` examples, and on ``extra`` ones."""
    c = np.zeros(M, bool)
    c[:n] = True
    c[list(extra)] = True
    return c


def pool_of_two(root: Path, temperature: float = 4.0, shift: int = 0) -> None:
    """Teachers 0 and 1: single runs right on 90 and 95 examples, the pair on run 0's 90 and one more."""
    write_run(root, f"t{temperature}-0", (0,), 0, right(90 + shift), temperature)
    write_run(root, f"t{temperature}-1", (1,), 0, right(95 + shift), temperature)
    write_run(root, f"t{temperature}-01", (0, 1), 0, right(90 + shift, (96 + shift,)), temperature)


# ----------------------------------------------------------------------------- small disks


@contextmanager
def mounted(path: Path, *options: str, source: str = "tmpfs", kind: str | None = "tmpfs"):
    """``path`` as a mount point (a tmpfs of ``-o size=...`` by default: a disk that fills), unmounted after; the
    test is skipped where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", *(["-t", kind] if kind else []), *options, source, str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount here ({' '.join(cmd)}: {r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def killed_after(writer: str, run, *args):
    """Call ``run(*args)`` with the checkpoint writer ``writer`` of ``mtd_cache.core`` ("fit._save_checkpoint",
    "fit_pack._save_pack") raising KeyboardInterrupt right after its first write, as a kill after an epoch's
    checkpoint would stop it."""
    import importlib

    import pytest

    module_name, name = writer.split(".")
    module = importlib.import_module(f"mtd_cache.core.{module_name}")
    real = getattr(module, name)

    def write_then_die(job, *rest):
        real(job, *rest)
        raise KeyboardInterrupt

    mp = pytest.MonkeyPatch()
    mp.setattr(module, name, write_then_die)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(*args)
    finally:
        mp.undo()
