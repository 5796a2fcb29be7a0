"""TinyBERT students: layer map, the dump's states and size, ILD from store vs online, the reference's
padded loss, stage-1 reuse, PLD, dev selection (tiny random BERTs on real MRPC lines, offline)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from factories import tiny_mrpc_teachers
from transformers import BertConfig, BertModel

from mtd_cache.core.errors import MtdError
from mtd_cache.core.runtime import seed_everything
from mtd_cache.models import bert
from mtd_cache.models.tinybert import TinyBertStudent, from_general
from mtd_cache.store import TeacherStore
from mtd_cache.students.context import StudentContext
from mtd_cache.students.data import store_inputs
from mtd_cache.students.recipes import tinybert, tinybert_stage1
from mtd_cache.students.run import RunRequest, resolve_settings, run_student
from mtd_cache.students.targets import make_targets
from mtd_cache.sweeps.execute import SweepConfig, execute, run_sweep
from mtd_cache.sweeps.plan import Job
from mtd_cache.tasks.text_data import collate, task_inputs
from mtd_cache.teachers import dump
from mtd_cache.teachers.text import TextDumpSettings, primary_spec

CPU = torch.device("cpu")
FAST = {"init_from_teacher": True, "student_layers": 2, "batch_size": 8, "prefetch": 0, "ild_epochs": 1,
        "epochs": 1, "eval_batch_size": 16}


@pytest.fixture(scope="module")
def mrpc4(tmp_path_factory):
    """Three 4-layer tiny BERT teachers on 32 real MRPC lines; a store with primaries 0 and 1 for 4 -> 2."""
    root = tmp_path_factory.mktemp("tinybert")
    data, teachers = tiny_mrpc_teachers(root, 32, 16, (0, 1, 2), layers=4)
    store = dump.dump_teachers("mrpc", teachers, root / "s.h5", [0, 1], {"batch_size": 8, "student_layers": 2}, "cpu")
    return store, teachers, data


def _ctx(store_path, teachers=(0, 1), primary=0, online=None, work_dir=None, **overrides) -> StudentContext:
    store = TeacherStore.open(store_path)
    r = resolve_settings(tinybert, store, {**FAST, **overrides})
    return StudentContext("tinybert", r.settings, r.requested, store, tuple(teachers), primary, 0, CPU, online=online,
                          work_dir=work_dir)


def _pspec(config, **options):
    return primary_spec(config, TextDumpSettings.resolve(options).settings)


# ----------------------------------------------------------------------------- layer map and dump


def test_dump_keeps_the_layers_of_the_tinybert_map():
    cfg = BertConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12)
    spec = _pspec(cfg, student_layers=4)
    assert spec.hidden_layers == (0, 3, 6, 9, 12) and spec.attn_layers == (3, 6, 9, 12) and spec.num_heads == 12
    six = BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12)
    assert _pspec(six, student_layers=3).hidden_layers == (0, 2, 4, 6)
    with pytest.raises(MtdError, match=r"teacher layers 6 is not a multiple of student layers 4: give a layer map "
                                       r"g\(0..4\), e.g. --set layer_map=0,2,3,5,6"):
        _pspec(six, student_layers=4)
    mapped = _pspec(six, student_layers=4, layer_map="0,1,3,4,6")
    assert mapped.hidden_layers == (0, 1, 3, 4, 6) and mapped.attn_layers == (1, 3, 4, 6)
    with pytest.raises(MtdError, match="not both"):
        _pspec(six, student_layers=3, attn_layers=[6])


def test_size_estimate_is_the_size_on_disk_and_the_budget_refuses(mrpc4, tmp_path):
    path, teachers, _ = mrpc4
    with TeacherStore.open(path) as s:
        estimate = s.spec.estimate_bytes(s.primary(0).lengths)
        n, total_len = s.num_examples, int(s.primary(0).lengths.sum())
        squares = int((s.primary(0).lengths.astype(np.int64) ** 2).sum())
    # worked out: logits 32*3*2*4, labels+sources 32*16, dev 16*(3*2*4+8) + 3*8, and per primary
    # lengths 32*4 + offsets 2*33*8 + hidden sum(L)*3 layers*32*2 + attention sum(L^2)*2 layers*2 heads*2
    per_primary = n * 4 + 2 * (n + 1) * 8 + total_len * 3 * 32 * 2 + squares * 2 * 2 * 2
    assert estimate == 32 * 3 * 2 * 4 + 32 * 16 + 16 * (3 * 2 * 4 + 8) + 3 * 8 + 2 * per_primary
    size = path.stat().st_size
    assert estimate <= size <= estimate + 64 * 1024  # HDF5 metadata and attributes: some KB
    out = tmp_path / "big.h5"
    with pytest.raises(MtdError, match=r"the store would take 0\.0 GB \(2 primary teacher\(s\)' states\), over the "
                                       r"1e-06 GB budget: raise it with --set size_budget_gb=N.*ild_source=online"):
        dump.dump_teachers("mrpc", teachers, out, [0, 1], {"student_layers": 2, "size_budget_gb": 1e-6}, "cpu")
    assert not out.exists() and not out.with_name("big.h5.partial").exists()  # refused before writing


def test_dump_of_an_augmented_file_records_sources_and_is_checked(mrpc4, tmp_path):
    _, teachers, data = mrpc4
    rows = (data / "MRPC" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, body = rows[0], rows[1:11]
    aug = tmp_path / "aug" / "train_aug.tsv"
    aug.parent.mkdir()
    lines, source = [header], []
    for i, row in enumerate(body):  # the original and one variant (last word dropped) per example
        f = row.split("\t")
        lines += [row, "\t".join(f[:3] + [" ".join(f[3].split()[:-1]), f[4]])]
        source += [i, i]
    aug.write_text("\n".join(lines) + "\n", encoding="utf-8")
    np.save(aug.with_suffix(".source.npy"), np.array(source, dtype=np.int64))
    out = dump.dump_teachers("mrpc", teachers[:1], tmp_path / "aug.h5", [0],
                             {"augmented": str(aug), "student_layers": 2}, "cpu")
    with TeacherStore.open(out) as s:
        np.testing.assert_array_equal(s.sources, source)
        assert s.num_examples == 20 and s.spec.extra["augmented"]["path"] == str(aug.resolve())
        tok, inputs = store_inputs(s)  # the student rebuilds the same inputs
        assert len(inputs.train) == 20 and inputs.augmented == s.spec.extra["augmented"]
        plain = task_inputs("mrpc", tok, 128, data, train_subset=20)
        assert inputs.fingerprint(bert.tokenizer_identity(tok)) != plain.fingerprint(bert.tokenizer_identity(tok))
    aug.write_text("\n".join(lines[:-1] + [lines[-2]]) + "\n", encoding="utf-8")  # a row changed
    with TeacherStore.open(out) as s, pytest.raises(MtdError, match="the augmented file .* changed since the dump"):
        store_inputs(s)


# ----------------------------------------------------------------------------- the student model


def test_student_saves_and_loads_and_takes_a_general_checkpoint(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    general = TinyBertStudent(BertModel(cfg), 2, 24)  # as TinyBertForPreTraining: bert.* and fit_dense.*
    folder = tmp_path / "general"
    folder.mkdir()
    cfg.save_pretrained(folder)
    state = {f"bert.{k}": v for k, v in general.bert.state_dict().items()}
    state.update({f"fit_dense.{k}": v for k, v in general.fit_dense.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    net, fit_loaded = from_general(str(folder), 3, 24)
    assert fit_loaded and torch.equal(net.fit_dense.weight, general.fit_dense.weight)
    assert torch.equal(net.bert.embeddings.word_embeddings.weight, general.bert.embeddings.word_embeddings.weight)
    assert net.classifier.out_features == 3 and net.config.num_labels == 3
    assert not from_general(str(folder), 3, 48)[1]  # another teacher width: a new projection
    ids = torch.tensor([[2, 7, 9, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    net.eval()
    out = net(ids, mask, output_hidden_states=True, output_scores=True)
    # TinyBERT's head: classifier(relu(pooler)), no dropout
    want = net.classifier(torch.relu(net.bert(input_ids=ids, attention_mask=mask).pooler_output))
    torch.testing.assert_close(out.logits, want)
    assert len(out.hidden_states) == 3 and len(out.scores) == 2 and out.scores[0].shape == (1, 2, 5, 5)
    assert float(out.scores[1][0, 0, 0, 4].detach()) < -9000  # the masked key carries -10000, as the reference
    again = TinyBertStudent.load(net.save(tmp_path / "saved")).eval()
    torch.testing.assert_close(again(ids, mask).logits, out.logits, rtol=0, atol=0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MtdError, match=r"the TinyBERT init '.*nothing': not a local folder, .*give a local folder "
                                       r"\(--set init=PATH\), or start from the teachers' layers"):
        from_general(str(tmp_path / "nothing"), 2, 24)


def test_init_from_teacher_copies_the_mapped_layers(mrpc4):
    path, teachers, _ = mrpc4
    ctx = _ctx(path)
    tok = bert.load_tokenizer(teachers[0].path)
    net, init = tinybert_stage1.init_student(ctx, tok, 32)
    teacher = bert.load_classifier(teachers[0].path, 2)
    assert init == {"init": "teacher 0", "init_layers": [1, 3]}  # g(1), g(2) = teacher layers 2 and 4
    for s, t in ((0, 1), (1, 3)):
        a, b = net.bert.encoder.layer[s].attention.self.query, teacher.bert.encoder.layer[t].attention.self.query
        assert torch.equal(a.weight, b.weight)
    assert torch.equal(net.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)


# ----------------------------------------------------------------------------- stage 1: the ILD loss


def _one_batch(ctx, source, pad_to=None):
    gmap = tinybert_stage1.layer_map(ctx)
    targets = make_targets(ctx, kd=False, hidden_layers=gmap, attn_layers=gmap[1:], states_online=source == "online")
    train = store_inputs(ctx.store)[1].train
    batch = collate(train, np.arange(8), pad_to=pad_to)
    batch.update(targets.read(batch["index"].numpy()))
    out = targets(batch, batch, batch["input_ids"].shape[1])
    return batch, (out.hidden, out.scores)


def test_ild_loss_from_cached_states_equals_the_online_primary(mrpc4):
    path, teachers, _ = mrpc4
    ctx = _ctx(path, primary=1)
    assert tinybert_stage1.ild_source(ctx, tinybert_stage1.layer_map(ctx)) == "store"
    seed_everything(0)
    net = tinybert_stage1.init_student(ctx, bert.load_tokenizer(teachers[0].path), 32)[0].eval()
    with torch.no_grad():  # move the student off its teacher layers, so that both losses are far from 0
        for layer in net.bert.encoder.layer:
            layer.attention.self.query.weight.normal_(0, 0.3)
    losses, targets = [], []
    for source in ("store", "online"):
        batch, (hidden, scores) = _one_batch(ctx, source)
        assert hidden.shape[:2] == (8, 3) and scores.shape[:3] == (8, 2, 2)
        targets.append((hidden, scores, batch["attention_mask"].bool()))
        with torch.no_grad():
            out = net(**bert.model_inputs(net, batch), output_hidden_states=True, output_scores=True)
            losses.append(tinybert_stage1.ild_loss(net, out, hidden, scores, batch["attention_mask"]))
    (h_store, a_store, valid), (h_online, a_online, _) = targets
    pairs = (valid[:, :, None] & valid[:, None, :])[:, None, None].expand_as(a_store)
    assert float(a_online[pairs].abs().max()) > 1e-2  # real scores, not zeros
    torch.testing.assert_close(a_store[pairs], a_online[pairs], rtol=2e-3, atol=1e-4)  # the mapped layers, fp16
    torch.testing.assert_close(h_store[valid[:, None].expand(-1, 3, -1)], h_online[valid[:, None].expand(-1, 3, -1)],
                               rtol=2e-3, atol=2e-3)
    cached, online = losses
    assert float(cached["rep"]) > 0.1 and float(cached["att"]) > 1e-2
    for key in ("rep", "att", "loss"):
        assert float(cached[key]) == pytest.approx(float(online[key]), rel=2e-3)  # fp16 storage


def _manual_scores(layer, h, mask):
    """Pre-softmax scores of one BERT layer from its input, written out: q k^T / sqrt(d) - 10000 at masked keys."""
    att = layer.attention.self
    heads, width = att.num_attention_heads, att.attention_head_size
    q = att.query(h).view(h.shape[0], -1, heads, width).transpose(1, 2)
    k = att.key(h).view(h.shape[0], -1, heads, width).transpose(1, 2)
    return q @ k.transpose(-1, -2) / math.sqrt(width) + (1.0 - mask[:, None, None, :].float()) * -10000.0


def test_reference_mode_reproduces_the_reference_padded_loss(mrpc4):
    path, teachers, _ = mrpc4
    ctx = _ctx(path, primary=0, ild_mask="reference", ild_source="auto")
    assert tinybert_stage1.ild_source(ctx, [0, 2, 4]) == "online"
    with pytest.raises(MtdError, match="ild_mask=reference averages over padded tensors"):
        tinybert_stage1.ild_source(_ctx(path, ild_mask="reference", ild_source="store"), [0, 2, 4])
    seed_everything(0)
    net = tinybert_stage1.init_student(ctx, bert.load_tokenizer(teachers[0].path), 32)[0].eval()
    with torch.no_grad():
        for layer in net.bert.encoder.layer:
            layer.attention.self.query.weight.normal_(0, 0.3)
    batch, (hidden, scores) = _one_batch(ctx, "online", pad_to=128)  # static padding to max_seq_length
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert ids.shape == (8, 128) and int(mask.sum()) < 8 * 128
    with torch.no_grad():
        got = tinybert_stage1.ild_loss(net, net(ids, mask, types, output_hidden_states=True, output_scores=True),
                                hidden, scores, None)
        # task_distill.py, written out: teacher reps[i * 2] and atts[i * 2 + 1], MSELoss() over padded tensors
        teacher = bert.load_classifier(teachers[0].path, 2).eval()
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "output_hidden_states": True}
        t_reps, s_reps = teacher(**inputs).hidden_states, net.bert(**inputs).hidden_states
        t_atts = [_manual_scores(teacher.bert.encoder.layer[i], t_reps[i], mask) for i in range(4)]
        s_atts = [_manual_scores(net.bert.encoder.layer[i], s_reps[i], mask) for i in range(2)]
        mse = torch.nn.MSELoss()
        zero = lambda a: torch.where(a <= -1e2, torch.zeros_like(a), a)  # noqa: E731
        att = sum(mse(zero(s), zero(t)) for s, t in zip(s_atts, [t_atts[1], t_atts[3]], strict=True))
        rep = sum(mse(net.fit_dense(s), t) for s, t in zip(s_reps, [t_reps[0], t_reps[2], t_reps[4]], strict=True))
    assert float(att) > 1e-2 and float(rep) > 0.1
    torch.testing.assert_close(got["att"], att, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["rep"], rep, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        valid = tinybert_stage1.ild_loss(net, net(ids, mask, types, output_hidden_states=True, output_scores=True),
                                  hidden, scores, mask)
    assert float(valid["att"]) != pytest.approx(float(att), rel=1e-3)  # the pad positions count there


# ----------------------------------------------------------------------------- stage-1 reuse, stage 2


def test_stage1_is_trained_once_per_primary_and_reused(mrpc4, tmp_path, monkeypatch):
    path, _, _ = mrpc4
    trained = []
    real = tinybert_stage1.build_stage1
    monkeypatch.setattr(tinybert_stage1, "build_stage1", lambda ctx, *a: trained.append(ctx.primary) or real(ctx, *a))

    def run(teachers, primary, **extra):
        return run_student(RunRequest(store=str(path), student="tinybert", teachers=teachers, primary=primary,
                                      out=str(tmp_path / "runs"), overrides={**FAST, **extra}, device="cpu"))

    first = run((0, 1), 0)
    assert trained == [0] and first["stage1_reused"] is False and first["ild_source"] == "store"
    second = run((0,), 0)  # another subset, same primary and seed: stage 1 is reused
    assert trained == [0] and second["stage1_reused"] is True and second["stage1_id"] == first["stage1_id"]
    assert second["stage1_wall_s"] == first["stage1_wall_s"] > 0
    folder = tmp_path / "runs" / "mrpc" / "tinybert" / "stage1" / first["stage1_id"]
    info = json.loads((folder / "stage1.json").read_text())
    assert info["layer_map"] == [0, 2, 4] and info["identity"]["primary_sha256"] == first["teachers_sha256"][0]
    assert len(info["history"]) == 1 and {"rep", "att"} <= set(info["history"][0])
    third = run((0, 1), 1)  # another primary: its own stage 1
    assert trained == [0, 1] and third["stage1_id"] != first["stage1_id"]
    cfg = SweepConfig(stores=(str(path),), student="tinybert", pool=(0, 1, 2), repeats=1, out=str(tmp_path / "runs"),
                      overrides=FAST, device="cpu")
    job = Job("stage1", (1,), 1, 0, 0, 0)
    assert execute(job, cfg)["status"] == "skipped" and trained == [0, 1]  # the sweep's stage-1 job
    assert first["loss_terms"] == ["kd"] and first["history"][-1]["kd"] > 0  # PLD: soft CE alone
    assert first["metric_name"] == "accuracy" and 0 <= first["metric"] <= 1
    baseline = run((), None)
    assert baseline["stage1_id"] is None and baseline["loss_terms"] == ["ce"] and trained == [0, 1]


def test_pld_is_the_reference_soft_cross_entropy(mrpc4):
    path, _, _ = mrpc4
    ctx = _ctx(path, teachers=(0, 2), primary=0)
    targets = make_targets(ctx, kd=True)
    train = store_inputs(ctx.store)[1].train
    batch = collate(train, np.arange(6))
    batch.update(targets.read(batch["index"].numpy()))
    z = targets(batch, batch).logits
    np.testing.assert_allclose(z.numpy(), (ctx.store.logits[:6, 0] + ctx.store.logits[:6, 2]) / 2, rtol=1e-6)
    student = torch.tensor([[0.5, -1.0]] * 6)
    from mtd_cache.core.losses import kd_loss

    got = kd_loss(student, z, ctx.settings.temperature, ctx.settings.kd_scale, ctx.settings.divergence)
    p = torch.softmax(z, -1)  # soft_cross_entropy: (-p * log_softmax(s)).mean(), t = 1
    want = (-p * torch.log_softmax(student, -1)).mean()
    torch.testing.assert_close(got, want)


def test_select_on_dev_reports_the_best_dev_score(mrpc4, tmp_path):
    path, _, _ = mrpc4
    rec = run_student(RunRequest(store=str(path), student="tinybert", teachers=(0, 1), primary=0,
                                 out=str(tmp_path / "runs"), device="cpu",
                                 overrides={**FAST, "epochs": 2, "lr": 1e-3, "select_on_dev": True, "eval_step": 1}))
    last = rec["history"][-1]
    assert rec["select_on_dev"] is True and last["selected_step"] in range(1, 9)
    assert rec["metric"] == last["metric"] >= last["final_metric"]
    plain = run_student(RunRequest(store=str(path), student="tinybert", teachers=(0, 1), primary=0,
                                   out=str(tmp_path / "runs"), device="cpu",
                                   overrides={**FAST, "epochs": 2, "lr": 1e-3}))
    assert plain["run_id"] != rec["run_id"] and plain["stage1_id"] == rec["stage1_id"]
    assert plain["metric"] == pytest.approx(last["final_metric"])  # same training, final model reported


def test_tinybert_refusals(mrpc4, tmp_path):
    path, _, _ = mrpc4
    with TeacherStore.open(path) as s:
        with pytest.raises(MtdError, match="unknown setting 'ild_lrr'"):
            resolve_settings(tinybert, s, {"ild_lrr": 1})
    with pytest.raises(MtdError, match="unknown ild_mask 'padded'; valid: valid, reference"):
        tinybert.build(_ctx(path, ild_mask="padded"))
    with pytest.raises(MtdError, match="teacher layers 4 is not a multiple of student layers 3"):
        tinybert_stage1.layer_map(_ctx(path, student_layers=3))
    assert tinybert_stage1.layer_map(_ctx(path, student_layers=3, layer_map="0,1,2,4")) == [0, 1, 2, 4]
    ctx = _ctx(path, teachers=(2,), primary=2, ild_source="store")
    with pytest.raises(MtdError, match="holds no states of primary 2: dump with --primary 2 --student-layers 2, or"):
        tinybert_stage1.ild_source(ctx, [0, 2, 4])
    assert tinybert_stage1.ild_source(_ctx(path, teachers=(2,), primary=2), [0, 2, 4]) == "online"  # auto
    assert tinybert_stage1.ild_source(_ctx(path, student_layers=4), [0, 1, 2, 3, 4]) == "online"  # layers 1, 3 missing
    assert tinybert_stage1.ild_epochs(_ctx(path, task_epochs=True)) == 20  # the reference's MRPC table entry


@pytest.mark.slow
def test_sweep_trains_one_stage1_per_primary_first(mrpc4, tmp_path):
    from mtd_cache.sweeps.report import load_records

    path, _, _ = mrpc4
    cfg = SweepConfig(stores=(str(path),), student="tinybert", pool=(0, 1), repeats=1, out=str(tmp_path),
                      overrides=FAST, threads=1, device="cpu")
    results = run_sweep(cfg, workers=1)
    kinds = [r["key"].split("/")[0] for r in results]
    assert kinds[:2] == ["stage1", "stage1"] and sorted(kinds[2:]) == ["baseline"] + ["student"] * 4
    assert all(r["status"] == "done" for r in results)
    runs = load_records(tmp_path)
    students = runs[runs["k"] > 0]
    assert len(students) == 4 and students["stage1_reused"].all()  # every student found its stage 1 trained
    assert students.groupby("primary")["stage1_id"].nunique().tolist() == [1, 1]
    assert len(list((tmp_path / "mrpc" / "tinybert" / "stage1").glob("*/stage1.json"))) == 2
    assert run_sweep(cfg, workers=1) == []  # all done, stage 1 included: nothing to run
