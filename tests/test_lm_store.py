"""Language-modelling tasks, causal-LM teachers gated in perplexity, and their token store through the commands."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from cli_runner import run_cli

from mtd_cache.core.errors import MtdError, StoreError
from mtd_cache.models import causal_lm
from mtd_cache.tasks.registry import get_task


def test_packed_and_per_document_sequences(tmp_path, lm):
    root, task, model = lm
    tok = causal_lm.load_tokenizer(f"hf:{model}")
    docs = get_task(str(task)).documents("train")
    assert len(docs) == 240 and docs[0].endswith(".")
    flat = [i for d in docs for i in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    packed = get_task(str(task)).sequences(tok, "train")
    assert set(packed.lengths) == {24} and len(packed) == len(flat) // 24 and packed.dropped == len(flat) % 24
    assert packed.ids.tolist() == flat[:len(packed) * 24] and packed.positions == 23 * len(packed)
    spec = json.loads(task.read_text())
    doc_task = task.with_name("per_doc.json")
    doc_task.write_text(json.dumps({**spec, "name": "per_doc", "packing": "document", "block_size": 8}))
    per_doc = get_task(str(doc_task)).sequences(tok, "train")
    first = tok(docs[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert per_doc[0].tolist() == first[:8] and per_doc.lengths.max() == 8
    pieces = [len(d) for doc in docs for d in [tok(doc, add_special_tokens=False)["input_ids"] + [1]]]
    assert int(per_doc.lengths.sum()) + per_doc.dropped == sum(pieces)


@pytest.mark.parametrize("change, message", [
    ({"block_size": 1}, "block_size 1: expected an integer >= 2"),
    ({"packing": "zip"}, "packing 'zip': expected packed or document"),
    ({"train": "missing.txt"}, "missing.txt not found"),
    ({"label_column": "x"}, "unknown key 'label_column' for a lm task"),
    ({"add_eos": "yes"}, "add_eos 'yes': expected true or false"),
])
def test_a_bad_lm_task_file_is_one_line(lm, change, message):
    root, task, _ = lm
    bad = task.with_name("bad.json")
    bad.write_text(json.dumps({**json.loads(task.read_text()), "name": "bad", **change}))
    with pytest.raises(MtdError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_task(str(bad))


def test_lm_teachers_record_perplexity_and_beat_the_unigram(lm):
    root, task, model = lm
    for seed in (0, 1, 2):
        info = json.loads((root / "teachers" / f"seed{seed}" / "teacher.json").read_text())
        m = info["metrics"]
        assert info["metric_name"] == "perplexity" and info["init"] == "random config"
        assert info["metric"] == m["perplexity"] < m["unigram_perplexity"] and not info["rejected"]
        assert m["perplexity"] == pytest.approx(np.exp(m["nll"]))
        assert info["vocab_size"] == len(causal_lm.load_tokenizer(f"hf:{model}"))
    w0 = (root / "teachers" / "seed0" / "model.safetensors").read_bytes()
    assert w0 != (root / "teachers" / "seed1" / "model.safetensors").read_bytes()  # seeds differ


def test_a_teacher_no_better_than_the_unigram_is_rejected(tmp_path, lm):
    from mtd_cache.teachers import train_teachers
    from mtd_cache.teachers.seeds import TeachersRejected

    _, task, model = lm
    with pytest.raises(TeachersRejected, match="seed 4 rejected .*no better than the unigram distribution"):
        train_teachers(str(task), [4], tmp_path / "t", f"hf:{model}", None, {"epochs": 1, "lr": 1e-9}, device="cpu")
    info = json.loads((tmp_path / "t" / "seed4" / "teacher.json").read_text())
    assert info["rejected"].startswith("no better than the unigram distribution (dev perplexity")


def test_a_killed_lm_teacher_resumes_to_the_same_weights(tmp_path, lm):
    from factories import killed_after

    from mtd_cache.teachers import train_teachers

    _, task, model = lm
    opts = {"epochs": 2, "lr": 1e-2, "batch_size": 4, "grad_accum": 2}
    train_teachers(str(task), [7], tmp_path / "whole", f"hf:{model}", None, opts, device="cpu")
    killed_after("fit._save_checkpoint", train_teachers, str(task), [7], tmp_path / "cut", f"hf:{model}", None,
                 opts, "cpu")
    assert (tmp_path / "cut" / "seed7" / "checkpoint.safetensors").exists()
    train_teachers(str(task), [7], tmp_path / "cut", f"hf:{model}", None, opts, device="cpu")
    whole, cut = (json.loads((tmp_path / d / "seed7" / "teacher.json").read_text()) for d in ("whole", "cut"))
    assert whole["sha256"] == cut["sha256"] and whole["metric"] == cut["metric"]


def test_gradient_accumulation_steps_as_one_batch():
    from mtd_cache.core.fit import Accumulated, Fit, fit

    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.randn(8)
    models = []
    for batches in ([np.arange(8)], [Accumulated((np.arange(4), np.arange(4, 8)))]):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        job = Fit(model=net, optimizer=opt, epochs=1, batches=lambda e, b=batches: b,
                  step=lambda rows, net=net: {"loss": ((net(x[rows])[:, 0] - y[rows]) ** 2).mean()})
        fit(job, torch.device("cpu"))
        models.append(net)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _datasets(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
        return out, dict(f.attrs)


def test_dump_shards_merge_into_the_one_dump_and_the_store_is_sealed(tmp_path, lm):
    from mtd_cache.store.tokens import TokenStore

    root, task, _ = lm
    common = ["dump", "--task", task, "--teachers-dir", root / "teachers", "--train-subset", "30", "--k", "4",
              "--set", "temperatures=1,2", "--dense-check"]
    one = run_cli("mtd-cache", *common, "--out", tmp_path / "one.h5")
    assert one.returncode == 0, one.stderr
    for i in (0, 2):  # two of three shards as separate jobs; the plain dump computes the third and merges
        r = run_cli("mtd-cache", *common, "--out", tmp_path / "merged.h5", "--shard", f"{i}/3")
        assert r.returncode == 0 and f"wrote shard {i}/3" in r.stdout, r.stderr
    again = run_cli("mtd-cache", *common, "--out", tmp_path / "merged.h5", "--shard", "2/3")
    assert again.returncode == 0 and "shard 2/3: dumped already" in again.stderr
    assert sorted(p.name for p in (tmp_path / "merged.h5.partial").glob("*.h5")) == [
        "shard-00000-of-00003.h5", "shard-00002-of-00003.h5"]
    r = run_cli("mtd-cache", *common, "--out", tmp_path / "merged.h5")
    assert r.returncode == 0 and "shard 1/3" in r.stderr and not (tmp_path / "merged.h5.partial").exists()
    (a, attrs_a), (b, attrs_b) = _datasets(tmp_path / "one.h5"), _datasets(tmp_path / "merged.h5")
    assert sorted(a) == sorted(b) == ["dense", "entropy", "gold", "sequences", "support/ids", "support/logits",
                                      "support/offsets", "tails", "tokens"]
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert attrs_a["fingerprint"] == attrs_b["fingerprint"]
    with TokenStore.open(tmp_path / "one.h5") as s:
        assert s.num_teachers == 3 and s.k == 4 and s.temperatures == (1.0, 2.0) and len(s.sequences) == 31
        assert 4 <= s.ids.size / s.positions <= 12
        c = s.dense_check  # every subset's sparse targets against the dense ones
        assert c["mean_probs"] < 2e-6 and c["mean_logits_outside_bound"] < 2e-6 and 0 <= c["kl_gap_max"]
        assert c["kl_count"] == s.positions * 3 * 2  # each teacher as the student, at each temperature
        assert c["kl_count@T1"] == c["kl_count@T2"] == s.positions * 3
        assert c["kl_gap_sum"] == pytest.approx(c["kl_gap_sum@T1"] + c["kl_gap_sum@T2"])
        assert 0 <= c["kl_gap_sum@T1"] <= c["kl_dense_sum@T1"]
        torch.testing.assert_close(s.dense(range(3))[..., :5], torch.from_numpy(a["dense"][:3, :, :5]))
    again = run_cli("mtd-cache", *common, "--out", tmp_path / "one.h5")
    assert again.returncode == 0 and "up to date" in again.stdout
    other = run_cli("mtd-cache", *common[:-1], "--out", tmp_path / "one.h5")
    assert other.returncode == 2 and "dumped otherwise (dense_check True there, False asked)" in other.stderr
    shown = run_cli("mtd-cache", "inspect", tmp_path / "one.h5")
    assert shown.returncode == 0 and "k = 4: |U| mean" in shown.stdout and "dense check  every subset" in shown.stdout
    assert "  at T = 2: dense KL" in shown.stdout
    # an attribute changed (not a byte of a dataset): the seal refuses it
    copy = tmp_path / "changed.h5"
    shutil.copy(tmp_path / "one.h5", copy)
    with h5py.File(copy, "r+") as f:
        f.attrs["k"] = 8
    with pytest.raises(StoreError, match="attributes do not match its seal"):
        TokenStore.open(copy)


def test_token_dump_refusals(tmp_path, lm):
    root, task, _ = lm
    base = ["dump", "--task", task, "--teachers-dir", root / "teachers", "--out", tmp_path / "s.h5"]
    for args, message in ((["--shard", "3/3"], "--shard 3/3: expected i in 0..2"),
                          (["--shard", "x"], "--shard 'x': expected I/N"),
                          (["--primary", "0"], "--primary: a token store keeps no states"),
                          (["--set", "temperatures=0,1"], "temperatures [0.0, 1.0]: expected one or more"),
                          (["--set", "size_budget_gb=0.00001"], "over the 1e-05 GB budget")):
        r = run_cli("mtd-cache", *base, *args)
        assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], (args, r.stderr)
        assert not (tmp_path / "s.h5").exists()


def test_a_model_that_cannot_read_the_blocks_or_sees_the_future_is_refused(tmp_path, lm):
    from transformers import BertConfig

    from mtd_cache.teachers import train_teachers

    _, task, model = lm
    long = task.with_name("long.json")
    long.write_text(json.dumps({**json.loads(task.read_text()), "name": "long", "block_size": 100}))
    with pytest.raises(MtdError, match=f"block_size 100 is longer than hf:{model}'s 64 positions"):
        train_teachers(str(long), [0], tmp_path / "a", f"hf:{model}", None, {"epochs": 1}, device="cpu")
    bert = tmp_path / "bert"
    BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(bert)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, bert / name)
    with pytest.raises(MtdError, match="is not a causal language model: its logits at a position change with a "
                                       "later token"):
        train_teachers(str(task), [0], tmp_path / "b", f"hf:{bert}", None, {"epochs": 1}, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
