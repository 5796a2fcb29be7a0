"""GLUE text: tokenisation, batching, BERT teachers and their dump (tiny random BERTs, offline).

The helpers at the top (tiny tokenizers, tiny BERTs, small TSVs) are imported by
test_distilbert.py too.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtd_cache.core.errors import MtdError
from mtd_cache.core.hashing import sha256_file
from mtd_cache.core.runtime import autocast_dtype
from mtd_cache.models import bert
from mtd_cache.store import TeacherStore, diff_stores
from mtd_cache.students.data import check_text_store
from mtd_cache.tasks import text_data
from mtd_cache.tasks.glue import compute_metrics, read_split
from mtd_cache.tasks.registry import get_task
from mtd_cache.teachers import Teacher, dump, find_teachers, train_teachers
from mtd_cache.teachers.seeds import TeachersRejected, train_one
from mtd_cache.teachers.text import TextDumpSettings

SHARED = Path(os.environ.get("MTD_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
GLUE_DIR = SHARED / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE_DIR / "MRPC").is_dir(), reason=f"no shared GLUE data at {GLUE_DIR}")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POS, NEG = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "dull"]
FILLER = ["the", "a", "movie", "film", "was", "plot", "very", "really", "it", "and", "actors", "story"]


# ----------------------------------------------------------------------------- helpers (shared)


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


# ----------------------------------------------------------------------------- tokenising and batching


@needs_glue
def test_encode_and_collate_match_the_tokenizer(tmp_path):
    data = write_mrpc_slice(tmp_path / "glue", 20, 4)
    tok = make_tokenizer(tmp_path / "tok", mrpc_texts(data))
    split = read_split("mrpc", "train", data)
    enc = text_data.encode(tok, split, max_length=24)
    assert len(enc) == 20 and enc.lengths.max() <= 24 and enc.ids.dtype == np.int32
    idx = [3, 0, 7]
    ref = tok([split.text_a[i] for i in idx], [split.text_b[i] for i in idx], truncation=True, max_length=24,
              padding="longest", return_tensors="pt")
    got = text_data.collate(enc, idx)
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(got[k], ref[k]), k
    assert got["labels"].tolist() == split.labels[idx].tolist() and got["index"].tolist() == idx
    assert text_data.collate(enc, idx, pad_to=30)["input_ids"].shape == (3, 30)


def test_bucket_batches_cover_everything_once_in_a_seeded_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 100, size=1000)
    a = text_data.bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    b = text_data.bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    c = text_data.bucket_batches(lengths, 32, torch.Generator().manual_seed(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert len(a) == 32 and sum(len(x) < 32 for x in a) == 1  # ceil(1000/32); one partial batch, kept
    padded = sum(len(x) * lengths[x].max() for x in a)
    assert padded < 1.1 * lengths.sum()  # little padding (random batches: ~1.9x)


def test_tokenizer_identity_is_content_not_location(tmp_path):
    tok = make_tokenizer(tmp_path / "a", ["one two"])
    again = bert.load_tokenizer(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = bert.load_tokenizer(tmp_path / "b")
    tok("one two", truncation=True, max_length=3)  # truncation settings are not identity
    other = make_tokenizer(tmp_path / "c", ["one two three"])
    ids = [bert.tokenizer_identity(t) for t in (tok, again, moved, other)]
    assert ids[0]["sha256"] == ids[1]["sha256"] == ids[2]["sha256"] != ids[3]["sha256"]
    assert ids[2]["name"] == str(tmp_path / "b")


def test_unknown_options_are_refused():
    with pytest.raises(MtdError, match="unknown dump setting 'nope'.*batch_size"):
        TextDumpSettings.resolve({"nope": 1, "max_length": None})
    with pytest.raises(MtdError, match="unknown precision 'fp8'"):
        autocast_dtype("fp8", torch.device("cpu"))
    assert autocast_dtype("auto", torch.device("cpu")) == (None, "fp32")


# ----------------------------------------------------------------------------- teachers


def test_train_teacher_tiny(tmp_path):
    data = write_sst2(tmp_path / "glue")
    base = make_bert(tmp_path / "base", sst2_words())
    out = tmp_path / "seed0"
    res = train_one(get_task("sst-2"), 0, str(base), str(data), out,
                             {"lr": 5e-3, "epochs": 10, "batch_size": 16, "max_length": None}, "cpu")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not (out / "checkpoint.safetensors").exists() and (out / "metrics.csv").exists()
    assert res["metric_name"] == "accuracy" and res["metric"] == res["metrics"]["accuracy"]
    assert res["metric"] >= 0.8 and res["chance_reason"] is None
    assert res["config"]["lr"] == 5e-3 and res["config"]["max_length"] == 128 and res["config"]["warmup"] == 0.1
    assert (res["num_layers"], res["hidden_size"], res["precision"]) == (2, 32, "fp32")
    assert res["model"] == str(base) and res["wall_s"] > 0
    reloaded = bert.load_classifier(out, 2)
    assert bert.num_layers(reloaded) == 2


def test_a_constant_teacher_is_rejected_kept_and_accepted_by_force_without_training(tmp_path, caplog):
    data = write_sst2(tmp_path / "glue", n_train=48, n_dev=16, all_negative=True)
    base = make_bert(tmp_path / "base", sst2_words())
    opts = {"lr": 3e-3, "epochs": 1, "batch_size": 16}
    with pytest.raises(TeachersRejected, match=r"teacher seed 0 rejected \(0: predicts a single class .*their "
                                               r"weights are kept: --force accepts them") as err:
        train_teachers("sst-2", [0], tmp_path / "t", str(base), str(data), opts, device="cpu")
    assert err.value.exit_code == 4
    info = json.loads((tmp_path / "t" / "seed0" / "teacher.json").read_text())
    assert info["rejected"].startswith("predicts a single class") and info["metric"] == pytest.approx(0.5)
    with caplog.at_level(logging.WARNING), pytest.raises(MtdError, match="no finished teacher"):
        find_teachers(tmp_path / "t")  # the dump and --online skip it, in one line
    assert "seed0: skipped, rejected by the quality gate" in caplog.text
    weights = (tmp_path / "t" / "seed0" / "model.safetensors").stat().st_mtime_ns
    done = train_teachers("sst-2", [0], tmp_path / "t", str(base), str(data), opts, device="cpu", force=True)
    assert done[0].info["rejected"] is None and done[0].info["accepted"].startswith("--force: predicts a single")
    assert (tmp_path / "t" / "seed0" / "model.safetensors").stat().st_mtime_ns == weights  # not trained again
    assert find_teachers(tmp_path / "t")[0].seed == 0


# ----------------------------------------------------------------------------- the dump


@pytest.fixture(scope="module")
def mrpc_teachers(tmp_path_factory):
    return tiny_mrpc_teachers(tmp_path_factory.mktemp("mrpc"), 40, 24, (0, 1))


def _direct(model, tok, split, i, max_length=128):
    enc = tok(split.text_a[i], split.text_b[i], truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**enc, output_hidden_states=True, output_attentions=True)


def test_dump_round_trip(mrpc_teachers, tmp_path):
    data, teachers = mrpc_teachers
    out = dump.dump_teachers("mrpc", teachers, tmp_path / "s.h5", [1],
                    {"chunk": 16, "batch_size": 8, "hidden_layers": "0,-1", "attn_layers": [1, 2]}, "cpu")
    split, dev = read_split("mrpc", "train", data), read_split("mrpc", "dev", data)
    tok = bert.load_tokenizer(teachers[0].path)
    with TeacherStore.open(out) as s:
        assert (s.num_examples, s.num_teachers, s.num_classes) == (40, 2, 2) and s.attrs["precision"] == "fp32"
        assert s.spec.extra["max_length"] == 128 and s.spec.extra["tokenizer"] == bert.tokenizer_identity(tok)
        assert list(s.attrs["teachers_sha256"]) == [t.sha256 for t in teachers]
        enc = [text_data.encode(tok, sp, 128) for sp in (split, dev)]
        assert s.fingerprint == text_data.text_fingerprint("mrpc", bert.tokenizer_identity(tok), 128, *enc)
        p = s.primary(1)
        assert p.hidden_layers == (0, 2) and p.attn_layers == (1, 2) and p.num_heads == 2
        for t, teacher in enumerate(teachers):
            model = bert.load_classifier(teacher.path, 2, attn_implementation="eager").eval()
            for i in (0, 7, 39):
                ref = _direct(model, tok, split, i)
                np.testing.assert_allclose(s.logits[i, t], ref.logits[0].numpy(), rtol=1e-5, atol=1e-5)
                if t == 1:
                    _check_states(p.read([i]), ref)
            dev_ref = np.stack([_direct(model, tok, dev, i).logits[0].numpy() for i in range(len(dev))])
            np.testing.assert_allclose(s.dev_logits[:, t], dev_ref, rtol=1e-5, atol=1e-5)
            assert s.dev_metric[t] == pytest.approx(compute_metrics("mrpc", dev_ref, dev.labels)["accuracy"])
        np.testing.assert_array_equal(s.labels, split.labels)


def _check_states(batch, ref) -> None:
    """The stored states of one example against a direct forward: hidden rows and pre-softmax scores."""
    n = int(batch.lengths[0])
    hidden = batch.hidden.reshape(2, n, -1).astype(np.float32)
    np.testing.assert_allclose(hidden[0], ref.hidden_states[0][0].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(hidden[1], ref.hidden_states[-1][0].numpy(), rtol=2e-3, atol=2e-3)
    scores = torch.from_numpy(batch.attn.astype(np.float32)).view(2, 2, n, n)
    for layer in range(2):  # softmax of the stored scores = the model's attention probabilities
        np.testing.assert_allclose(scores[layer].softmax(-1).numpy(), ref.attentions[layer][0].numpy(),
                                   atol=2e-3)


def test_interrupted_dump_resumes_to_the_same_store(mrpc_teachers, tmp_path, monkeypatch):
    data, teachers = mrpc_teachers
    opts = {"chunk": 8, "batch_size": 4, "train_subset": 20}
    clean = dump.dump_teachers("mrpc", teachers, tmp_path / "clean.h5", [0], opts, "cpu")
    real = dump.dump_teacher

    def dies_on_teacher_1(w, plan, t, *args):
        if t == 1:
            raise KeyboardInterrupt
        return real(w, plan, t, *args)

    monkeypatch.setattr(dump, "dump_teacher", dies_on_teacher_1)
    with pytest.raises(KeyboardInterrupt):
        dump.dump_teachers("mrpc", teachers, tmp_path / "r.h5", [0], opts, "cpu")
    assert not (tmp_path / "r.h5").exists() and (tmp_path / "r.h5.partial").is_dir()
    monkeypatch.setattr(dump, "dump_teacher", real)
    resumed = dump.dump_teachers("mrpc", teachers, tmp_path / "r.h5", [0], opts, "cpu")
    assert diff_stores(clean, resumed) == []
    with TeacherStore.open(resumed) as s:
        assert s.num_examples == 20 and s.spec.extra["train_subset"] == 20


def test_dump_refuses_teachers_with_different_tokenizers(mrpc_teachers, tmp_path):
    data, teachers = mrpc_teachers
    odd = teacher_at(make_bert(tmp_path / "odd", mrpc_texts(data), extra=("zzzz",)), 9)
    with pytest.raises(MtdError, match="share one tokenizer.*odd"):
        dump.dump_teachers("mrpc", [teachers[0], odd], tmp_path / "s.h5", [], {}, "cpu")
    with pytest.raises(MtdError,
                       match="augmented file x.tsv not found \\(write it with mtd-cache augment --task mrpc\\)"):
        dump.dump_teachers("mrpc", teachers, tmp_path / "s.h5", [], {"augmented": "x.tsv"}, "cpu")
    with pytest.raises(MtdError, match="layer 5 is outside"):
        dump.dump_teachers("mrpc", teachers, tmp_path / "s.h5", [0], {"hidden_layers": [5]}, "cpu")


def test_store_check_names_both_values(mrpc_teachers, tmp_path):
    data, teachers = mrpc_teachers
    out = dump.dump_teachers("mrpc", teachers, tmp_path / "s.h5", [], {"max_length": 32, "train_subset": 8}, "cpu")
    tok = bert.load_tokenizer(teachers[0].path)
    ident = bert.tokenizer_identity(tok)
    splits = [read_split("mrpc", sp, data) for sp in ("train", "dev")]

    def fp(t, max_length):
        train, dev = (text_data.encode(t, sp, max_length) for sp in splits)
        return text_data.text_fingerprint("mrpc", bert.tokenizer_identity(t), max_length, train.head(8), dev)

    with TeacherStore.open(out) as s:
        check_text_store(s, ident, 32, fp(tok, 32))  # the same inputs pass
        with pytest.raises(MtdError, match="max_length mismatch: the student's 64 is not the store's 32"):
            check_text_store(s, ident, 64, fp(tok, 64))
        make_tokenizer(tmp_path / "other", mrpc_texts(data), extra=("zzzz",))
        other = bert.load_tokenizer(tmp_path / "other")
        with pytest.raises(MtdError, match=f"tokenizer mismatch.*{tmp_path / 'other'}.*store's.*seed0"):
            check_text_store(s, bert.tokenizer_identity(other), 32, fp(other, 32))
