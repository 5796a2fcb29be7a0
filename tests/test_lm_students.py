"""Language-model students from a token store: the loss against float64 dense computations, cached against
online, a sweep and its report in perplexity, the public targets and the Trainer example."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_runner import run_cli

from mtd_cache.core.sparse import SPARSE_RULES, bucket_kd, dense_kd, divergence, sparse_batch, subset_target

DIVERGENCES = ("kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl")


def _pool(b: int = 6, n: int = 3, v: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(b, 1, v, generator=g, dtype=torch.float64) * 3
    return shared + torch.randn(b, n, v, generator=g, dtype=torch.float64), \
        torch.randn(b, v, generator=g, dtype=torch.float64) * 2


def _by_hand(p: np.ndarray, q: np.ndarray, kind: str) -> float:
    """One row's divergence, float64, from the definitions."""
    if kind == "kl":
        return float(np.sum(p * np.log(p / q)))
    if kind == "reverse_kl":
        return float(np.sum(q * np.log(q / p)))
    if kind == "skew_kl":  # alpha 0.1
        return float(np.sum(p * np.log(p / (0.1 * p + 0.9 * q))))
    if kind == "skew_rkl":
        return float(np.sum(q * np.log(q / (0.9 * p + 0.1 * q))))
    m = (p + q) / 2
    return float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_each_divergence_against_its_definition(kind):
    g = np.random.default_rng(1)
    p, q = g.dirichlet(np.ones(7)), g.dirichlet(np.ones(7))
    got = divergence(torch.log(torch.from_numpy(p))[None], torch.log(torch.from_numpy(q))[None], kind)
    assert float(got[0]) == pytest.approx(_by_hand(p, q, kind), rel=1e-12)
    beta = divergence(torch.log(torch.from_numpy(p))[None], torch.log(torch.from_numpy(q))[None], "jsd", beta=0.3)
    m = 0.3 * p + 0.7 * q
    assert float(beta[0]) == pytest.approx(float(0.3 * np.sum(p * np.log(p / m)) + 0.7 * np.sum(q * np.log(q / m))))


@pytest.mark.parametrize("rule", SPARSE_RULES)
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_a_dense_cache_gives_the_dense_loss_and_a_sparse_one_a_lower_bound(rule, kind):
    dense, student = _pool()
    t = 2.0
    for subset in [c for size in (1, 2, 3) for c in combinations(range(3), size)]:
        teachers = dense[:, list(subset)]
        want = dense_kd(student, teachers, rule, t, None, kind, reduce=False)
        # by hand, float64, for the first token
        lq = torch.log_softmax(student[0] / t, -1).numpy()
        lps = torch.log_softmax(teachers[0] / t, -1).numpy()
        if rule == "mean_probs":
            by_hand = _by_hand(np.exp(lps).mean(0), np.exp(lq), kind)
        elif rule == "mean_logits":
            by_hand = _by_hand(torch.softmax(teachers[0].mean(0) / t, -1).numpy(), np.exp(lq), kind)
        else:
            by_hand = np.mean([_by_hand(np.exp(lp), np.exp(lq), kind) for lp in lps])
        assert float(want[0]) / t**2 == pytest.approx(by_hand, rel=1e-9)
        full = sparse_batch(dense, 40, (t,), dtype=torch.float64)  # U = the vocabulary: tails empty
        assert torch.isneginf(full.tails).all()
        got = bucket_kd(student, full, subset_target(full, subset, rule, t), t, kind, reduce=False)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
        sparse = sparse_batch(dense, 4, (t,), dtype=torch.float64)
        lower = bucket_kd(student, sparse, subset_target(sparse, subset, rule, t), t, kind, reduce=False)
        assert (lower >= -1e-9).all()  # never negative
        if rule != "mean_logits":  # exact buckets: a merged tail loses divergence, never adds it
            assert (lower.double() <= want + 1e-6).all()


@pytest.mark.parametrize("kind", ("reverse_kl", "jsd", "skew_kl", "skew_rkl"))
def test_the_gradient_of_the_bucketed_divergences(kind):
    dense, student = _pool(b=3, v=12)
    batch = sparse_batch(dense, 3, (2.0,), dtype=torch.float64)
    for rule in SPARSE_RULES:
        target = subset_target(batch, (0, 2), rule, 2.0)
        target.log_p = None if target.log_p is None else target.log_p.double()
        target.log_tail = None if target.log_tail is None else target.log_tail.double()
        if target.per_teacher is not None:
            lp, lt, w = target.per_teacher
            target.per_teacher = (lp.double(), lt.double(), w.double())
        z = student.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda s, t=target: bucket_kd(s, batch, t, 2.0, kind), (z,))


def test_perplexity_is_resampled_as_a_ratio_of_sums():
    from mtd_cache.sweeps.resampling import perplexity_counts

    nll = np.array([[2.0, 4.0, 1.0], [3.0, 3.0, 3.0]])
    tokens = np.array([1, 3, 2])
    counts = perplexity_counts(nll, tokens)
    weights = np.array([[1.0, 2.0], [1.0, 0.0], [1.0, 1.0]])  # the sequences once each; sequence 0 twice and 2
    got = counts.evaluate(weights)
    assert got[0, 0] == pytest.approx(-math.exp(7 / 6)) and got[1, 0] == pytest.approx(-math.exp(9 / 6))
    assert got[0, 1] == pytest.approx(-math.exp((2 * 2 + 1) / (2 * 1 + 2)))


@pytest.fixture(scope="module")
def stores(lm, tmp_path_factory):
    """A sparse token store (k = 8) and a dense one (k = the vocabulary) of the counting teachers."""
    root, task, _ = lm
    out = tmp_path_factory.mktemp("lm_stores")
    for name, k in (("sparse", 8), ("dense", 1000)):
        r = run_cli("mtd-cache", "dump", "--task", task, "--teachers-dir", root / "teachers", "--out",
                    out / f"{name}.h5", "--k", str(k), "--set", "temperatures=1,2")
        assert r.returncode == 0, r.stderr
    return out / "sparse.h5", out / "dense.h5"


def _train(store, model, *extra):
    r = run_cli("mtd-train", "--store", store, "--student", f"lm:{model}", "--epochs", "2", "--lr", "1e-2", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_cached_equals_online_on_a_dense_store(lm, stores, tmp_path):
    root, _, model = lm
    _, dense = stores
    cached = _train(dense, model, "--teachers", "0,2", "--out", tmp_path / "c", "--set", "temperature=2")
    online = _train(dense, model, "--teachers", "0,2", "--out", tmp_path / "o", "--set", "temperature=2",
                    "--online", "--teachers-dir", root / "teachers")
    rec = {m: json.loads(next((tmp_path / m).rglob(f"{r['run_id']}.json")).read_text())
           for m, r in (("c", cached), ("o", online))}
    kd_c, kd_o = (np.array([h["kd"] for h in rec[m]["history"]]) for m in ("c", "o"))
    np.testing.assert_allclose(kd_c, kd_o, rtol=2e-3)  # the store's float16 logits against float32 ones
    assert cached["metric"] == pytest.approx(online["metric"], rel=1e-2)
    assert rec["o"]["config"]["online"] and not rec["c"]["config"]["online"]
    scores = np.load(next((tmp_path / "c").rglob("*.predictions.npz")))
    assert math.exp(scores["nll"].sum() / scores["tokens"].sum()) == pytest.approx(cached["metric"], rel=1e-9)


def test_a_student_run_and_its_refusals(lm, stores, tmp_path):
    root, _, model = lm
    sparse, _ = stores
    got = _train(sparse, model, "--teachers", "0,1,2", "--out", tmp_path, "--epochs", "3")
    rec = json.loads(next(tmp_path.rglob(f"{got['run_id']}.json")).read_text())
    assert rec["metric_name"] == "perplexity" and rec["kd_rule"] == "mean_probs" and rec["k"] == 3
    assert rec["metric"] < rec["unigram_perplexity"]  # alive
    assert rec["next_token_accuracy"] == rec["history"][-1]["accuracy"] and 0 < rec["next_token_accuracy"] < 1
    again = _train(sparse, model, "--teachers", "0,1,2", "--out", tmp_path, "--epochs", "3")
    assert again["run_id"] == got["run_id"]  # found done
    for args, message in ((["--teachers", "0", "--set", "temperature=3"], "temperature 3: the store's tails were "
                                                                          "computed at 1, 2 only"),
                          (["--teachers", "0", "--set", "kd_rule=min_ce"], "kd_rule"),
                          (["--teachers", "0", "--primary", "0"], "takes no primary"),
                          (["--teachers", "5"], "--teachers: index 5 out of range")):
        r = run_cli("mtd-train", "--store", sparse, "--student", f"lm:{model}", "--out", tmp_path / "x", *args)
        assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], (args, r.stderr)
    moved = tmp_path / "data"  # the data moved, and its dev split changed since the dump
    shutil.copytree(root / "data", moved)
    (moved / "dev.txt").write_text("ten one two.\n\n" + (moved / "dev.txt").read_text())  # (an appended one
    # could fall into the packed split's dropped last block)
    r = run_cli("mtd-train", "--store", sparse, "--student", f"lm:{model}", "--teachers", "0", "--out",
                tmp_path / "x", "--data-dir", moved)
    assert r.returncode == 2 and "the dev split of task counting is not the one the store's dump read" in r.stderr
    r = run_cli("mtd-train", "--store", sparse, "--student", "resnet8", "--teachers", "0", "--out", tmp_path / "x")
    assert r.returncode == 2 and "resnet8 is an image student; " in r.stderr and "a language-model task" in r.stderr


def test_a_sweep_of_a_three_teacher_pool_and_its_report_in_perplexity(lm, stores, tmp_path):
    from mtd_cache.sweeps.records import load_records

    _, _, model = lm
    sparse, _ = stores
    sweep = ["mtd-sweep", "--store", sparse, "--student", f"lm:{model}", "--pool", "0-2", "--repeats", "2",
             "--out", tmp_path / "runs", "--set", "epochs=2", "--set", "lr=1e-2"]
    dry = run_cli(*sweep, "--dry-run")  # the estimate times a few real steps (gradient accumulation's batches)
    assert dry.returncode == 0 and "14 students x" in dry.stderr and "(calibrated: 3 steps" in dry.stderr, dry.stderr
    r = run_cli(*sweep)
    assert r.returncode == 0, r.stderr
    runs = load_records(tmp_path / "runs")
    # every k-subset of the pool twice, and the CE-only baseline twice: 3 + 3 + 1 subsets, 2 repeats, + 2
    assert len(runs) == 16 and sorted(runs["k"].value_counts().items()) == [(0, 2), (1, 6), (2, 6), (3, 2)]
    assert set(runs["metric_name"]) == {"perplexity"} and not runs["dead"].any()
    r = run_cli("mtd-report", tmp_path / "runs", "--out", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    main = summary[summary["variant"] == "all runs"].set_index("k")
    # worst (the _min columns, in scores) is the highest perplexity
    assert (main["single_min_mean"] >= main["single_max_mean"]).all()
    one = runs[runs["k"] == 1]
    assert main.loc[1, "single_min_mean"] == pytest.approx(one.groupby("teachers")["metric"].max().mean())
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "difference (perplexity reduction)" in text and "sequences (perplexity resampled by sequence" in text
    diffs = pd.read_csv(tmp_path / "report" / "differences.csv")
    eq = diffs[(diffs["difference"] == "eq_worst") & (diffs["k"] == 3) & (diffs["variant"] == "all runs")].iloc[0]
    assert eq["covers"] == "examples+seeds" and eq["ci_low"] <= eq["estimate"] <= eq["ci_high"]


def test_kd_targets_on_a_token_store(stores):
    import mtd_cache
    from mtd_cache.students.lm_targets import TokenTargets

    sparse, _ = stores
    targets = mtd_cache.KDTargets(str(sparse), [2, 0], rule="mean_logits", weights=[1.0, 3.0], temperature=2.0)
    assert isinstance(targets, TokenTargets) and targets.teachers == [0, 2] and targets.weights == [3.0, 1.0]
    got = targets.targets([4, 1])
    positions = targets.positions([4, 1])
    assert len(got.ids) == len(positions) == 2 * 23 and (got.bound > -math.inf).all()
    batch = targets.store.batch(positions)
    direct = subset_target(batch, [0, 2], "mean_logits", 2.0, [3.0, 1.0])
    torch.testing.assert_close(got.log_p, direct.log_p)
    b = targets.batch([4, 1])
    student = torch.randn(2, b["input_ids"].shape[1], targets.store.vocab_size, dtype=torch.float64)
    flat = student[:, :-1].reshape(-1, student.shape[-1])
    want = bucket_kd(flat, batch, direct, 2.0, "kl")
    torch.testing.assert_close(targets.loss(student, [4, 1]), want)
    with pytest.raises(Exception, match="temperature 3: the store's tails were computed at 1, 2 only"):
        mtd_cache.KDTargets(str(sparse), [0], temperature=3.0)


def test_the_lm_trainer_example_runs(lm, stores):
    _, _, model = lm
    sparse, _ = stores
    spec = importlib.util.spec_from_file_location("lm_trainer", Path(__file__).resolve().parents[1] / "examples" /
                                                  "lm_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--store", str(sparse), "--student", str(model), "--teachers", "0,1", "--max-steps", "40",
                       "--lr", "1e-2"])
    assert out["held_out_perplexity"] < out["held_out_perplexity_before"] / 2
    assert set(out["last_terms"]) == {"ce", "kd"} and out["last_terms"]["kd"] >= 0


def test_rules_compared_on_a_token_store(lm, stores, tmp_path):
    _, _, model = lm
    sparse, _ = stores
    r = run_cli("mtd-sweep", "--store", sparse, "--student", f"lm:{model}", "--pool", "0-1", "--repeats", "2",
                "--rules", "mean_logits,mean_probs,mean_losses", "--out", tmp_path / "runs", "--set", "epochs=1",
                "--set", "lr=1e-2")
    assert r.returncode == 0, r.stderr
    r = run_cli("mtd-report", tmp_path / "runs", "--out", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    rules = pd.read_csv(tmp_path / "report" / "rules.csv")
    assert sorted(set(rules["rule"])) == ["mean_logits", "mean_losses", "mean_probs"] and set(rules["k"]) == {2}
    worst = rules[rules["statistic"] == "worst"].set_index("rule")
    # values in perplexity (the worst: the highest of the combination's runs); differences are reductions
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert worst.loc["mean_logits", "difference"] == 0
    base_worst = runs[(runs["k"] == 2) & runs["experiment"].eq(worst.loc["mean_logits", "experiment"])]["metric"].max()
    assert worst.loc["mean_logits", "value"] == pytest.approx(base_worst)
    probs = worst.loc["mean_probs"]
    assert probs["difference"] == pytest.approx(probs["base"] - probs["value"])
    r = run_cli("mtd-sweep", "--store", sparse, "--student", f"lm:{model}", "--pool", "0-1", "--rules",
                "mean_logits,ca_mkd", "--out", tmp_path / "bad")
    assert r.returncode == 2 and "--rules ca_mkd:" in r.stderr, r.stderr


def test_a_layer_cut_keeps_evenly_spaced_decoder_layers():
    from transformers import GPT2Config, GPT2LMHeadModel

    from mtd_cache.core.errors import MtdError
    from mtd_cache.students.recipes.lm_kd import cut_layers

    torch.manual_seed(0)
    net = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=5, n_head=2))
    kept = [net.transformer.h[i] for i in (0, 2, 4)]
    cut_layers(net, 3)
    assert list(net.transformer.h) == kept and net.config.n_layer == 3
    assert net(input_ids=torch.randint(0, 30, (2, 7))).logits.shape == (2, 7, 30)
    with pytest.raises(MtdError, match="student_layers 4: the model has 3 layers"):
        cut_layers(net, 4)


def test_a_layer_cut_of_a_llama_shaped_model_runs():
    from transformers import LlamaConfig, LlamaForCausalLM

    from mtd_cache.students.recipes.lm_kd import cut_layers

    torch.manual_seed(0)
    net = LlamaForCausalLM(LlamaConfig(vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16))
    cut_layers(net, 2)
    assert len(net.model.layers) == 2 and net.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in net.model.layers] == [0, 1]
    assert net(input_ids=torch.randint(0, 30, (2, 7))).logits.shape == (2, 7, 30)
