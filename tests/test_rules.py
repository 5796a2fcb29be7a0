"""The combination rules and divergences of ``losses.multi_teacher_kd``, against values computed by hand.

Two classes and three teachers on one example whose label is class 0: teacher 1 gives p(0) = 3/4, teacher 2
1/4, teacher 3 1/2 (logits [ln 3, 0], [0, ln 3], [0, 0]), so each teacher's CE to the label is -ln p(0).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtd_cache.core.losses import BASE_RULES, KD_DIVERGENCES, multi_teacher_kd
from mtd_cache.core.weighing import TaidSchedule, example_weights, min_norm_weights

LN3 = math.log(3.0)
TEACHERS = torch.tensor([[[LN3, 0.0], [0.0, LN3], [0.0, 0.0]]], dtype=torch.float64)  # (1, 3, 2)
LABEL = torch.tensor([0])
STUDENT = torch.tensor([[0.0, math.log(2.0)]], dtype=torch.float64)  # q = (1/3, 2/3)
Q = (1 / 3, 2 / 3)


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def _mix(w, dists):
    return tuple(sum(wi * d[c] for wi, d in zip(w, dists, strict=True)) for c in range(2))


P1, P2, P3 = (0.75, 0.25), (0.25, 0.75), (0.5, 0.5)


@pytest.mark.parametrize(("divergence", "expected"), [
    ("ce", -(0.75 * math.log(1 / 3) + 0.25 * math.log(2 / 3))),
    ("kl", _kl(P1, Q)),
    ("reverse_kl", _kl(Q, P1)),
    ("jsd", 0.5 * _kl(P1, _mix((0.5, 0.5), (P1, Q))) + 0.5 * _kl(Q, _mix((0.5, 0.5), (P1, Q)))),
    ("skew_kl", _kl(P1, _mix((0.1, 0.9), (P1, Q)))),
    ("skew_rkl", _kl(Q, _mix((0.9, 0.1), (P1, Q)))),
])
def test_each_divergence_by_hand(divergence, expected):
    got = multi_teacher_kd(STUDENT, TEACHERS[:, :1], 1.0, "sum", divergence)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # sum_t2 at t = 1 is the same; at t = 2 both sides soften and the result is times 4
    assert float(multi_teacher_kd(STUDENT, TEACHERS[:, :1], 1.0, "sum_t2", divergence)) == pytest.approx(expected)
    soft = multi_teacher_kd(STUDENT * 2, TEACHERS[:, :1] * 2, 2.0, "sum_t2", divergence)
    assert float(soft) == pytest.approx(4 * expected, rel=1e-12)


def test_jsd_ends_are_forward_and_reverse_kl_and_taid_interpolates():
    one = TEACHERS[:, :1]
    assert float(multi_teacher_kd(STUDENT, one, 1.0, "sum", "jsd", beta=0.0)) == pytest.approx(_kl(P1, Q))
    assert float(multi_teacher_kd(STUDENT, one, 1.0, "sum", "jsd", beta=1.0)) == pytest.approx(_kl(Q, P1))
    # TAID at i: target proportional to q^(1 - i) p^i; its soft CE to q
    for i in (0.0, 0.4, 1.0):
        raw = [Q[c] ** (1 - i) * P1[c] ** i for c in range(2)]
        target = [r / sum(raw) for r in raw]
        expected = -sum(t * math.log(q) for t, q in zip(target, Q, strict=True))
        got = multi_teacher_kd(STUDENT, one, 1.0, "sum", "taid", interpolation=i)
        assert float(got) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("divergence", [d for d in KD_DIVERGENCES if d != "taid"])
def test_every_divergence_s_gradient_checks_in_float64(divergence):
    torch.manual_seed(0)
    teachers = torch.randn(4, 3, 5, dtype=torch.float64)
    student = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 4, 1])
    for rule in [r for r in BASE_RULES if r != "ae_kd"]:  # weights that do not move with the student
        def loss(z, rule=rule):
            return multi_teacher_kd(z, teachers, 2.0, "sum_t2", divergence, rule, labels=labels, beta=0.3, alpha=0.2)
        assert torch.autograd.gradcheck(loss, (student,)), rule


def test_detached_parts_stay_out_of_the_gradient():
    """AE-KD's weights and TAID's target are computed from the student, detached: the gradient is that of the
    loss with them held fixed."""
    torch.manual_seed(2)
    teachers = torch.randn(5, 3, 4, dtype=torch.float64)
    student = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    (got,) = torch.autograd.grad(multi_teacher_kd(student, teachers, 1.0, "sum", "ce", "ae_kd"), student)
    from mtd_cache.core.losses import _teacher_gradients

    log_pi = torch.log_softmax(teachers, -1)
    w = min_norm_weights(_teacher_gradients(student, log_pi, 1.0, "sum", "ce", {}))
    (fixed,) = torch.autograd.grad(multi_teacher_kd(student, teachers, 1.0, "sum", "ce", "mean_probs",
                                                    weights=w), student)
    torch.testing.assert_close(got, fixed)
    one = teachers[:, 0]
    (got,) = torch.autograd.grad(multi_teacher_kd(student, one, 1.0, "sum", "taid", interpolation=0.3), student)
    q = torch.softmax(student.detach(), -1)
    target = torch.softmax(0.7 * torch.log(q) + 0.3 * torch.log_softmax(one, -1), -1)
    torch.testing.assert_close(got, (q - target) / len(student))


def test_the_per_example_weights_by_hand():
    # CE to the label: -ln(3/4), -ln(1/4), -ln(1/2); softmax over the teachers of CE is proportional to 1/p(0)
    inv = [4 / 3, 4.0, 2.0]
    soft = [x / sum(inv) for x in inv]  # 2/11, 6/11, 3/11
    expected = {
        "ca_mkd": [(1 - s) / 2 for s in soft],  # 9/22, 5/22, 8/22
        "avg_ce": [0.75 / 1.5, 0.25 / 1.5, 0.5 / 1.5],  # softmax of -CE: proportional to p(0)
        "min_ce": [1.0, 0.0, 0.0],
    }
    h = [-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))] * 2 + [math.log(2.0)]
    expected["entropy"] = [math.exp(-x) / sum(math.exp(-y) for y in h) for y in [0] for x in h]
    for rule, w in expected.items():
        got = example_weights(rule, TEACHERS, LABEL, 1.0)
        assert got.shape == (1, 3) and got[0].tolist() == pytest.approx(w, rel=1e-12), rule
        # the loss: the student's soft CE to the teachers' mixture under those weights
        target = _mix(w, (P1, P2, P3))
        ce = -sum(t * math.log(q) for t, q in zip(target, Q, strict=True))
        loss = multi_teacher_kd(STUDENT, TEACHERS, 1.0, "sum", "ce", rule, labels=LABEL)
        assert float(loss) == pytest.approx(ce, rel=1e-12), rule
    # a static prior multiplies, renormalised; min_ce and ae_kd take none
    prior = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / 4
    raw = [a * b for a, b in zip(expected["entropy"], prior.tolist(), strict=True)]
    got = example_weights("entropy", TEACHERS, None, 1.0, prior)
    assert got[0].tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)
    for rule in ("min_ce", "ae_kd"):
        with pytest.raises(ValueError, match=f"rule '{rule}' takes no teacher weights"):
            multi_teacher_kd(STUDENT, TEACHERS, 1.0, "sum", "ce", rule, weights=[1, 2, 1], labels=LABEL)
    with pytest.raises(ValueError, match="rule 'ca_mkd' weighs teachers by their cross-entropy to the label"):
        multi_teacher_kd(STUDENT, TEACHERS, 1.0, "sum", "ce", "ca_mkd")


def test_min_norm_weights_closed_form_for_two_and_brute_force_for_three():
    g1, g2 = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    # min over a of |a g1 + (1 - a) g2|^2: a = (g2 - g1).g2 / |g1 - g2|^2 = 1 / 5
    assert min_norm_weights(torch.stack([g1, g2])).tolist() == pytest.approx([0.2, 0.8], abs=1e-9)
    torch.manual_seed(3)
    g = torch.randn(3, 6, dtype=torch.float64)
    w = min_norm_weights(g)
    best = min(((a, b, 1 - a - b) for a, b in itertools.product([i / 400 for i in range(401)], repeat=2)
                if a + b <= 1), key=lambda v: float((torch.tensor(v, dtype=torch.float64) @ g).norm()))
    assert float((w @ g).norm()) <= float((torch.tensor(best, dtype=torch.float64) @ g).norm()) + 1e-9
    assert float(w.sum()) == pytest.approx(1.0) and bool((w >= 0).all())


@pytest.mark.parametrize("rule", BASE_RULES)
@pytest.mark.parametrize("divergence", KD_DIVERGENCES)
def test_one_teacher_and_equal_teachers_are_plain_kd(rule, divergence):
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 1, 4, dtype=torch.float64)
    labels = torch.randint(0, 4, (6,))
    plain = multi_teacher_kd(student, teacher[:, 0], 2.0, "sum_t2", divergence, interpolation=0.5)
    one = multi_teacher_kd(student, teacher, 2.0, "sum_t2", divergence, rule, labels=labels, interpolation=0.5)
    same = multi_teacher_kd(student, teacher.expand(6, 3, 4), 2.0, "sum_t2", divergence, rule, labels=labels,
                            interpolation=0.5)
    assert float(one) == pytest.approx(float(plain), rel=1e-10)
    assert float(same) == pytest.approx(float(plain), rel=1e-10)


def test_taid_schedule_by_hand_and_its_state_round_trips():
    s = TaidSchedule(start=0.4, end=1.0, alpha=0.1, beta=0.5)
    s.total = 10
    s.update(2.0)  # the first step only remembers the loss
    assert (s.value, s.step) == (0.4, 1)
    s.update(1.0)  # change 1/2, momentum 1/4; the line at 2/10 of the run: 0.4 + 0.6 * 0.2 = 0.52
    grown = 0.4 + 0.1 * (1 / (1 + math.exp(-0.25))) * 0.6
    assert s.momentum == pytest.approx(0.25) and s.value == pytest.approx(max(0.52, grown))
    other = TaidSchedule()
    other.load_state_dict(s.state_dict())
    assert other.state_dict() == s.state_dict()
    for _ in range(20):
        s.update(1.0)
    assert s.value == 1.0  # never past the end


@pytest.mark.parametrize(("rule", "extra"), [
    ("mean_logits", {}), ("mean_losses", {}), ("mean_probs", {}), ("ca_mkd", {}), ("entropy", {}), ("ae_kd", {}),
    ("min_ce", {}), ("avg_ce", {}),
    ("random_subset", {"subset_size": 1}), ("random_subset", {"subset_size": 1, "subset_rule": "entropy"})])
def test_every_rule_from_the_store_equals_the_online_teachers(tiny, rule, extra):
    """The KD term of one batch, its targets read from the store and computed by the teachers online: equal (a
    float32 store) for every rule, random_subset drawing the same teacher from the batch's key on both sides."""
    from mtd_cache.students import objective
    from mtd_cache.students.data import store_train_images
    from mtd_cache.students.run import RunRequest, plan_run
    from mtd_cache.students.targets import make_targets

    over = {"kd_rule": rule, **extra}
    base = {"store": str(tiny["image"]), "student": "resnet8", "teachers": (0, 1), "device": "cpu", "seed": 5,
            "overrides": over}
    cached, online = (plan_run(RunRequest(**base, **kw)) for kw in ({}, {"online": True,
                                                                        "teachers_dir": str(tiny["teachers"])}))
    assert cached.run_id != online.run_id and cached.selection.rule == rule
    data = store_train_images(cached.store, None, torch.device("cpu"))
    views = torch.as_tensor(cached.store.views)
    idx, v = torch.arange(8, 24), torch.arange(16) % len(views)
    x = data.batch(idx, views[v])
    student = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    out = objective.StudentOut(logits=student, labels=data.labels[idx])
    got = []
    for planned in (cached, online):
        ctx = planned.context()
        targets = make_targets(ctx, kd=True)
        t = targets(targets.read(idx.numpy(), v.numpy()), x)
        got.append(float(objective.TERMS["kd"].fn(out, t, objective.KD(ctx.settings, ctx.selection))))
    assert got[0] == pytest.approx(got[1], rel=1e-5)
    if rule == "random_subset":  # the drawn teacher is the key's, the same for the same batch and seed
        sel, key = cached.selection, step_key_of(idx, 5)
        assert sel.draw(key) == sel.draw(key) and len(sel.draw(key)) == 1


def step_key_of(idx, seed):
    from mtd_cache.students.selection import step_key

    return step_key(idx.numpy(), seed)


def test_random_subsets_are_drawn_evenly_and_settings_are_checked():
    from mtd_cache.core.errors import MtdError
    from mtd_cache.students.recipes import image_kd
    from mtd_cache.students.selection import TeacherSelection, step_key

    sel = TeacherSelection((0, 2, 3, 5), None, "random_subset", None, 2, "mean_logits")
    counts = [0] * 4
    for b in range(2000):
        drawn = sel.draw(step_key([b, b + 1], 0))
        assert len(drawn) == 2 and drawn == sorted(set(drawn))
        for i in drawn:
            counts[i] += 1
    assert all(abs(c / 2000 - 0.5) < 0.05 for c in counts)  # each teacher in half the steps
    assert TeacherSelection((0, 1), None, "random_subset", None, 5).draw(123) == [0, 1]  # j >= k: all
    assert step_key([1, 2], 0) != step_key([2, 1], 0) != step_key([1, 2], 1)
    for over, message in [({"kd_rule": "random_subset"}, "kd_rule=random_subset needs subset_size=J"),
                          ({"subset_size": 2}, "subset_size=2 is for kd_rule=random_subset, not mean_logits"),
                          ({"kd_rule": "min_ce", "teacher_weights": [1, 2]},
                           "teacher_weights with kd_rule min_ce: a static prior has no meaning there"),
                          ({"kd_rule": "random_subset", "subset_size": 1, "subset_rule": "ae_kd",
                            "teacher_weights": [1, 2]}, "teacher_weights with kd_rule ae_kd"),
                          ({"divergence": "taid", "taid_start": 0.9, "taid_end": 0.5},
                           "taid_start=0.9 must be below taid_end=0.5")]:
        with pytest.raises(MtdError, match=message):
            image_kd.Settings.resolve(over)


def test_a_taid_run_resumes_its_schedule_and_trains_alone(tiny, tmp_path):
    from factories import killed_after

    from mtd_cache.core.checkpoints import load_state
    from mtd_cache.students.pack import packable
    from mtd_cache.students.run import RunRequest, plan_run, run_student

    def req(out):
        return RunRequest(store=str(tiny["image"]), student="resnet8", teachers=(0, 1), out=str(out), device="cpu",
                          overrides={"epochs": 2, "batch_size": 8, "divergence": "taid", "kd_rule": "ca_mkd"})

    whole = run_student(req(tmp_path / "whole"))
    killed_after("fit._save_checkpoint", run_student, req(tmp_path / "cut"))
    state = load_state(plan_run(req(tmp_path / "cut")).checkpoint)["objective"]
    assert state["step"] == 5 and state["total"] == 10 and 0.4 < state["value"] <= 1.0  # after epoch 1 of 2
    resumed = run_student(req(tmp_path / "cut"))
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["metric"] == whole["metric"] and resumed["run_id"] == whole["run_id"]
    assert packable(req(tmp_path)) == ("runs with divergence=taid train one per process (each student's schedule "
                                       "is its own state)")


def test_a_rules_sweep_makes_one_experiment_per_rule_and_one_comparison(tiny, tmp_path):
    """Two rules over a pool of two, two repeats: the k = 2 runs twice (one per rule), the k = 1 and CE-only runs
    once; the report gives each rule's experiment the shared runs and compares the rules, paired."""
    from cli_runner import run_cli

    from mtd_cache.sweeps.records import load_records
    from mtd_cache.sweeps.rules import compare_rules, rule_groups, share_single_runs

    out = tmp_path / "runs"
    r = run_cli("mtd-sweep", "--store", tiny["image"], "--student", "resnet8", "--pool", "0-1", "--repeats", "2",
                "--epochs", "1", "--device", "cpu", "--threads", "1", "--rules", "mean_logits,ca_mkd", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "10 jobs: 8 students, 2 CE-only" in r.stderr  # 2 repeats x (k=2) x 2 rules + 2 x 2 (k=1) + 2 CE-only
    assert "k=2 teachers 0,1 seed 1 ca_mkd: " in r.stderr
    df = load_records(out)
    assert len(df) == 10 and sorted(df.groupby("experiment").size().tolist()) == [2, 8]
    (group,) = rule_groups(df)
    assert sorted(group) == ["ca_mkd", "mean_logits"]
    shared = share_single_runs(df)
    ca = shared[shared["experiment"] == group["ca_mkd"]]
    assert sorted(ca["k"]) == [0, 0, 1, 1, 1, 1, 2, 2]
    assert set(ca[ca["k"] <= 1]["shared_from"]) == {group["mean_logits"]}
    table = compare_rules(shared, n_resamples=200)
    assert set(table["rule"]) == {"mean_logits", "ca_mkd"} and set(table["k"]) == {2}
    ml = table[table["rule"] == "mean_logits"]
    assert (ml["difference"] == 0).all()  # mean_logits against itself
    ca_rows = table[table["rule"] == "ca_mkd"].set_index("statistic")
    assert ca_rows.loc["worst", "difference"] == pytest.approx(ca_rows.loc["worst", "value"]
                                                              - ca_rows.loc["worst", "base"])
    assert (ca_rows["covers"] == "examples+seeds").all()  # both repeats of every combination ran
    from mtd_cache.sweeps.execute import SweepConfig, request_for
    from mtd_cache.sweeps.plan import Job

    # a stage-1 job (no rule of its own) gets the sweep's first rule's settings: random_subset's only under it
    cfg = SweepConfig(stores=("s",), student="tinybert", pool=(0, 1), rules=("mean_logits", "random_subset"),
                      overrides={"subset_size": 2})
    assert request_for(Job("stage1", (0,), 0, 0, 0, 0), cfg).overrides == {"kd_rule": "mean_logits"}
    assert request_for(Job("student", (0, 1), 0, 0, 0, 0, rule="random_subset"), cfg).overrides == {
        "subset_size": 2, "kd_rule": "random_subset"}
    rep = run_cli("mtd-report", out, "--out", tmp_path / "report")
    assert rep.returncode == 0, rep.stderr
    text = (tmp_path / "report" / "rules.md").read_text()
    assert "# Rules compared" in text and "### k = 2" in text and "| ca_mkd |" in text


def test_the_agreement_statistics_against_a_brute_force_count():
    from types import SimpleNamespace

    from mtd_cache.tasks.agreement import agreement, agreement_lines, ece

    rng = np.random.default_rng(0)
    m, t, c = 50, 3, 4
    labels = rng.integers(0, c, m)
    z = rng.normal(size=(m, t, c)) + 2.0 * np.eye(c)[labels][:, None, :] * rng.integers(0, 2, (m, t, 1))
    store = SimpleNamespace(dev_logits=z.astype(np.float32), dev_labels=labels, metric="accuracy")
    got = agreement(store, score=lambda logits, y: float((np.asarray(logits).argmax(-1) == y).mean()))
    pred = z.astype(np.float32).astype(np.float64).argmax(-1)
    for i in range(t):
        assert got["teachers"][i]["score"] == sum(pred[e, i] == labels[e] for e in range(m)) / m
    for p in got["pairs"]:
        i, j = p["pair"]
        assert p["agreement"] == sum(pred[e, i] == pred[e, j] for e in range(m)) / m
        assert p["disagreement"] == pytest.approx(1 - p["agreement"])
    zz = z.astype(np.float32).astype(np.float64)
    for e in got["ensembles"]:
        scores = [float(((zz[:, list(s)].mean(1)).argmax(-1) == labels).mean())
                  for s in itertools.combinations(range(t), e["k"])]
        assert e["subsets"] == len(scores) and e["mean_logits_mean"] == pytest.approx(np.mean(scores))
        assert (e["mean_logits_min"], e["mean_logits_max"]) == (min(scores), max(scores))
    assert got["gain"]["mean_logits"] == pytest.approx(got["ensembles"][-1]["mean_logits_mean"]
                                                       - np.mean([x["score"] for x in got["teachers"]]))
    # ECE by hand: two bins hold the examples; |accuracy - confidence| weighted by their shares
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])  # one example per bin: right at .9, wrong at .8, right at .7 and .6
    assert ece(probs, y) == pytest.approx(0.25 * (0.1 + 0.8 + 0.3 + 0.4))
    assert any("ensemble gain" in line for line in agreement_lines(got))


def test_a_text_student_trains_with_a_per_example_rule_and_taid(tiny, tmp_path):
    """A text student (hf: one-layer BERT) on the tiny text store: ca_mkd reads the labels its batches carry,
    TAID's schedule spans the run's steps; the loss is finite and the rule recorded."""
    from mtd_cache.students.run import RunRequest, run_student

    rec = run_student(RunRequest(store=str(tiny["text"]), student=f"hf:{tiny['student']}", teachers=(0, 1),
                                 out=str(tmp_path), device="cpu",
                                 overrides={"epochs": 2, "batch_size": 8, "kd_rule": "ca_mkd", "divergence": "taid"}))
    assert rec["kd_rule"] == "ca_mkd" and rec["loss_terms"] == ["ce", "kd"]
    assert all(math.isfinite(h["kd"]) and h["kd"] > 0 for h in rec["history"])
