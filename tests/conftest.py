import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (store_child) import by name
# verified-markers (mtd_cache/store/verified.py) of this session's stores in a folder of their own, not ~/.cache
os.environ.setdefault("MTD_VERIFIED_DIR", tempfile.mkdtemp(prefix="mtd-verified-"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """Tiny image and text stores (``tiny_stores.py``), built once per session; tests change copies only."""
    from tiny_stores import build

    return build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def sst2_store(tmp_path_factory):
    """Three tiny BERT teachers of a small SST-2-format task, their store, and a one-layer student folder."""
    from factories import make_bert, sst2_words, teacher_at, write_sst2

    from mtd_cache.teachers import dump

    root = tmp_path_factory.mktemp("api_sst2")
    data = write_sst2(root / "glue", 64, 24)
    teachers = [teacher_at(make_bert(root / f"seed{s}", sst2_words(), seed=s), s, "sst-2", data) for s in (0, 1, 2)]
    store = dump.dump_teachers("sst-2", teachers, root / "s.h5", [], {"max_length": 32}, "cpu")
    return root, store, make_bert(root / "student", sst2_words(), layers=1, hidden=16, seed=9)


@pytest.fixture(scope="session")
def digits_teacher_pairs(tmp_path_factory):
    """Two pairs of tiny digits teachers (t: seeds 0, 1; t2: seeds 5, 6) and a clean store of t, in one folder."""
    from factories import cli

    from mtd_cache.teachers import train_teachers

    root = tmp_path_factory.mktemp("hard")
    opts = {"epochs": 1, "train_subset": 200}
    train_teachers("digits", [0, 1], root / "t", "resnet8", None, opts, device="cpu")
    train_teachers("digits", [5, 6], root / "t2", "resnet8", None, opts, device="cpu")
    cli("dump", "--task", "digits", "--teachers-dir", root / "t", "--out", root / "clean.h5")
    return root


@pytest.fixture(scope="session")
def sst2_teachers(tmp_path_factory):
    """Two tiny BERT teachers of a small SST-2-format task, the base model and their options."""
    from factories import make_bert, sst2_words, write_sst2

    from mtd_cache.teachers import train_teachers

    root = tmp_path_factory.mktemp("first_hour")
    data = write_sst2(root / "glue", 48, 16)
    base = make_bert(root / "base", sst2_words())
    opts = {"lr": 5e-3, "epochs": 1, "batch_size": 16, "max_length": 32}
    train_teachers("sst-2", [0, 1], root / "t", str(base), str(data), opts, device="cpu", force=True)
    return root, data, base, opts


@pytest.fixture(scope="session")
def lm(tmp_path_factory):
    """A counting corpus (``lm_corpus``), a tiny GPT-2 random config over it and three seeded teachers trained on
    it: (root, task file, model folder); the teachers in root/teachers."""
    from lm_corpus import tiny_lm, write_corpus

    from mtd_cache.teachers import train_teachers

    root = tmp_path_factory.mktemp("lm")
    task = write_corpus(root / "data")
    model = tiny_lm(root / "tiny", task)
    train_teachers(str(task), [0, 1, 2], root / "teachers", f"hf:{model}", None,
                   {"epochs": 2, "lr": 1e-2, "batch_size": 8}, device="cpu")
    return root, task, model
