"""DistilBERT students: layer choice, weight mapping, cached vs online teachers, refusals, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import make_bert, mrpc_texts, sst2_words, tiny_mrpc_teachers, write_sst2

from mtd_cache.core.errors import MtdError
from mtd_cache.core.runtime import seed_everything
from mtd_cache.models import bert
from mtd_cache.store import TeacherStore
from mtd_cache.students.context import StudentContext
from mtd_cache.students.recipes import distilbert
from mtd_cache.students.run import RunRequest, resolve_settings, run_student
from mtd_cache.teachers import dump, find_teachers, train_teachers
from mtd_cache.teachers.dump import run_dump

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- init from the teacher


def test_evenly_spaced_layers():
    assert bert.evenly_spaced_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # extract_distilbert.py's choice
    assert bert.evenly_spaced_layers(6, 3) == [0, 3, 5]  # 2.5 rounds up
    assert bert.evenly_spaced_layers(12, 4) == [0, 4, 7, 11]
    assert bert.evenly_spaced_layers(6, 6) == list(range(6))
    assert bert.evenly_spaced_layers(6, 1) == [5]
    assert distilbert.layer_choice(6, 2) == [0, 5]
    for bad in (0, 7):
        with pytest.raises(MtdError, match=f"student_layers {bad} must be between 1 and the teacher's 6"):
            bert.evenly_spaced_layers(6, bad)


def _tiny_teacher(tmp_path, layers=4):
    folder = make_bert(tmp_path / "t", ["the good movie was bad ."], layers=layers, seed=3)
    return bert.load_classifier(folder, 2).eval()


def test_distilbert_from_bert_copies_the_chosen_layers(tmp_path):
    teacher = _tiny_teacher(tmp_path)
    student = bert.distilbert_from_bert(teacher, [0, 3])
    t, s = teacher.bert, student.distilbert
    assert type(student).__name__ == "DistilBertForSequenceClassification" and len(s.transformer.layer) == 2
    assert torch.equal(s.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight)
    assert torch.equal(s.embeddings.position_embeddings.weight,
                       t.embeddings.position_embeddings.weight + t.embeddings.token_type_embeddings.weight[0])
    assert torch.equal(s.embeddings.LayerNorm.bias, t.embeddings.LayerNorm.bias)
    for si, ti in ((0, 0), (1, 3)):
        sl, tl = s.transformer.layer[si], t.encoder.layer[ti]
        pairs = [(sl.attention.q_lin, tl.attention.self.query), (sl.attention.k_lin, tl.attention.self.key),
                 (sl.attention.v_lin, tl.attention.self.value), (sl.attention.out_lin, tl.attention.output.dense),
                 (sl.sa_layer_norm, tl.attention.output.LayerNorm), (sl.ffn.lin1, tl.intermediate.dense),
                 (sl.ffn.lin2, tl.output.dense), (sl.output_layer_norm, tl.output.LayerNorm)]
        for a, b in pairs:
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    plain = bert.distilbert_from_bert(teacher, [0, 3], fold_token_type=False)  # extract_distilbert.py exactly
    assert torch.equal(plain.distilbert.embeddings.position_embeddings.weight, t.embeddings.position_embeddings.weight)


def test_full_depth_student_computes_the_teachers_states(tmp_path):
    teacher = _tiny_teacher(tmp_path, layers=2)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        want = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for fold, equal in ((True, True), (False, False)):
            student = bert.distilbert_from_bert(teacher, [0, 1], fold_token_type=fold).eval()
            got = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            assert len(got) == len(want) == 3
            close = all(torch.allclose(g[0, :5], w[0, :5], atol=1e-5) for g, w in zip(got, want, strict=True))
            assert close is equal


# ----------------------------------------------------------------------------- the recipe on a store


@pytest.fixture(scope="module")
def mrpc_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrpcstore")
    data, teachers = tiny_mrpc_teachers(root, 32, 16, (0, 1, 2))
    store = dump.dump_teachers("mrpc", teachers, root / "s.h5", [1], {"batch_size": 8}, "cpu")
    return store, teachers, data


def _ctx(store_path, teachers=(0, 1), primary=1, online=None, **overrides) -> StudentContext:
    store = TeacherStore.open(store_path)
    r = resolve_settings(distilbert, store, {"init_from_teacher": True, "student_layers": 1, "batch_size": 8,
                                             "prefetch": 0, **overrides})
    return StudentContext("distilbert", r.settings, r.requested, store, tuple(teachers), primary, 0, CPU, online=online)


def test_cached_losses_equal_the_online_teachers(mrpc_store):
    path, teachers, _ = mrpc_store
    jobs = []
    for online in (None, teachers):
        seed_everything(0)
        ctx = _ctx(path, teachers=(0, 1), primary=1, online=online)
        jobs.append((build := distilbert.build(ctx), ctx))
        build.model.eval()  # no dropout: both students compute the same thing
    (cached, ctx_c), (online, ctx_o) = jobs
    assert ctx_c.extra["init_layers"] == [1] and ctx_c.extra["init"] == "teacher 1"
    assert ctx_c.extra["teacher_source"] == "store" and ctx_o.extra["teacher_source"] == "online"
    for batch in list(cached.batches(0))[:2]:
        assert "hidden" in batch and "teacher_logits" in batch
        with torch.no_grad():
            a, b = cached.step(batch), online.step(batch)
        assert set(a) == {"loss", "ce", "kd", "cos"}
        assert float(a["cos"]) > 1e-3
        assert float(a["cos"]) == pytest.approx(float(b["cos"]), abs=1e-3)  # fp16 storage
        assert float(a["kd"]) == pytest.approx(float(b["kd"]), abs=1e-5)
        assert float(a["ce"]) == float(b["ce"])


def test_student_with_other_inputs_is_refused(mrpc_store, tmp_path):
    path, teachers, data = mrpc_store
    with pytest.raises(MtdError, match="max_length mismatch: the student's 64 is not the store's 128"):
        distilbert.build(_ctx(path, max_length=64))
    make_bert(tmp_path / "other", mrpc_texts(data), extra=("zzzz",))
    with pytest.raises(MtdError, match=f"tokenizer mismatch: the student's '{tmp_path / 'other'}'.*store's.*seed0"):
        distilbert.build(_ctx(path, tokenizer=str(tmp_path / "other")))


def test_widths_and_depths_must_agree(mrpc_store, tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    path, teachers, _ = mrpc_store
    cfg = DistilBertConfig(vocab_size=4000, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=128)
    DistilBertForSequenceClassification(cfg).save_pretrained(tmp_path / "narrow")
    narrow = {"init_from_teacher": False, "init": str(tmp_path / "narrow")}
    with pytest.raises(MtdError, match="has 2 layers, student_layers is 1"):
        distilbert.build(_ctx(path, **narrow))
    with pytest.raises(MtdError, match="equal widths: student hidden size 16, primary teacher 32"):
        distilbert.build(_ctx(path, student_layers=2, **narrow))
    job = distilbert.build(_ctx(path, student_layers=2, alpha_cos=0.0, **narrow))  # KD alone needs no width match
    assert set(job.step(next(iter(job.batches(0))))) == {"loss", "ce", "kd"}


# ----------------------------------------------------------------------------- end to end


def test_teachers_dump_student_end_to_end(tmp_path):
    data = write_sst2(tmp_path / "glue", n_train=96, n_dev=48)
    base = make_bert(tmp_path / "base", sst2_words())
    tdir = tmp_path / "teachers"
    opts = {"lr": 5e-3, "epochs": 10, "batch_size": 16}
    done = train_teachers("sst-2", [0, 1], tdir, str(base), str(data), opts, device="cpu")
    assert all(t.info["metric"] > 0.8 for t in done) and done[0].info["data_dir"] == str(data.resolve())
    store = run_dump("sst-2", tdir, tmp_path / "store.h5", [0], {"batch_size": 16}, "cpu")
    with TeacherStore.open(store) as s:
        np.testing.assert_allclose(s.dev_metric, [t.info["metric"] for t in find_teachers(tdir)], atol=1e-6)
    common = dict(store=str(store), student="distilbert", out=str(tmp_path / "runs"), device="cpu",
                  overrides={"init_from_teacher": True, "student_layers": 1, "epochs": 3, "lr": 1e-3,
                             "batch_size": 16})
    rec = run_student(RunRequest(teachers=(0, 1), primary=0, **common))
    assert rec["status"] == "done" and rec["k"] == 2 and 0.0 <= rec["metric"] <= 1.0
    assert rec["init_layers"] == [1] and rec["loss_terms"] == ["ce", "kd", "cos"]
    assert {"kd", "cos", "accuracy"} <= set(rec["history"][-1])
    base_rec = run_student(RunRequest(teachers=(), **common))
    assert base_rec["k"] == 0 and base_rec["loss_terms"] == ["ce"] and base_rec["init"] == "teacher 0"
