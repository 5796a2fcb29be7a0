"""teachers/text.py: BERT teachers trained, rejected at chance, and dumped into a store (tiny random BERTs, offline)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from factories import (
    make_bert,
    make_tokenizer,
    mrpc_texts,
    sst2_words,
    teacher_at,
    tiny_mrpc_teachers,
    write_sst2,
)

from mtd_cache.core.errors import MtdError
from mtd_cache.models import bert
from mtd_cache.store import TeacherStore, diff_stores
from mtd_cache.students.data import check_text_store
from mtd_cache.tasks import text_data
from mtd_cache.tasks.glue import compute_metrics, read_split
from mtd_cache.tasks.registry import get_task
from mtd_cache.teachers import dump, find_teachers, train_teachers
from mtd_cache.teachers.seeds import TeachersRejected, train_one


@pytest.fixture(scope="module")
def mrpc_teachers(tmp_path_factory):
    return tiny_mrpc_teachers(tmp_path_factory.mktemp("mrpc"), 40, 24, (0, 1))


def _direct(model, tok, split, i, max_length=128):
    enc = tok(split.text_a[i], split.text_b[i], truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**enc, output_hidden_states=True, output_attentions=True)


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
