"""The objective (``students/objective.py``): the registry of loss terms, each recipe's weights as the registry
declares them (names, defaults, ``since``), and the loss composed from hand-computed term values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mtd_cache.students import objective
from mtd_cache.students.objective import KD, TERMS, Objective, StudentOut, Term
from mtd_cache.students.recipes import distilbert, image_kd, text_kd, tinybert
from mtd_cache.students.selection import TeacherSelection
from mtd_cache.students.targets import TeacherOutputs


def weights_of(settings_cls: type) -> dict[str, tuple[float, str | None]]:
    """weight setting -> (default, since) of every term weight a recipe's settings declare."""
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    return {t.weight: (fields[t.weight].default, fields[t.weight].metadata["since"])
            for t in objective.weighted_terms(settings_cls)}


def test_the_registry_in_its_order():
    assert list(TERMS) == ["ce", "kd", "hidden", "cos", "rep", "att"]
    assert [TERMS[n].weight for n in TERMS] == ["alpha_ce", "alpha_kd", "alpha_hidden", "alpha_cos", "alpha_rep",
                                                "alpha_att"]
    assert [n for n, t in TERMS.items() if not t.teacher] == ["ce"]  # the CE-only baseline keeps only CE
    with pytest.raises(ValueError, match="loss term 'kd' is registered already"):
        objective.register(Term("kd", "alpha_kd2", lambda s, t, c: s.logits.sum(), frozenset({objective.LOGITS})))
    with pytest.raises(ValueError, match="loss term 'loss' is registered already"):  # the total's own key
        objective.register(Term("loss", "alpha_loss", lambda s, t, c: s.logits.sum(), frozenset({objective.LOGITS})))


@pytest.mark.parametrize("recipe, expected", [
    # the weights each recipe always had keep their defaults and stay in every run id (since None); a term a
    # recipe can compute but never had comes off (0) and with since=, out of old run ids
    (image_kd, {"alpha_ce": (1.0, "0.3"), "alpha_kd": (1.0, None)}),
    (text_kd, {"alpha_ce": (1.0, None), "alpha_kd": (1.0, None), "alpha_hidden": (0.0, None),
               "alpha_cos": (0.0, "0.3")}),
    (distilbert, {"alpha_ce": (1.0, None), "alpha_kd": (1.0, None), "alpha_hidden": (0.0, "0.3"),
                  "alpha_cos": (1.0, None)}),
    (tinybert, {"alpha_ce": (0.0, None), "alpha_kd": (1.0, None), "alpha_rep": (1.0, "0.3"),
                "alpha_att": (1.0, "0.3")}),
])
def test_each_recipe_gets_a_weight_per_term_it_can_compute(recipe, expected):
    assert weights_of(recipe.Settings) == expected


def batch() -> tuple[StudentOut, TeacherOutputs]:
    student = StudentOut(logits=torch.tensor([[2.0, 0.0], [0.0, 1.0]]), labels=torch.tensor([0, 0]),
                         hidden=torch.tensor([[[1.0, 0.0], [5.0, 5.0]], [[0.0, 2.0], [1.0, 1.0]]]),
                         mask=torch.tensor([[1, 0], [1, 1]]))
    teacher = TeacherOutputs(logits=torch.tensor([[1.0, 1.0], [0.0, 2.0]]),
                             hidden=torch.tensor([[[[0.0, 1.0], [9.0, 9.0]]], [[[0.0, 3.0], [1.0, 1.0]]]]))
    return student, teacher


def config(**over) -> KD:
    s = text_kd.Settings(**over)
    return KD(s, TeacherSelection((0, 1), 0, "mean_logits", None))


def test_the_terms_by_hand():
    student, teacher = batch()
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2  # -log softmax at the gold class 0
    # KD at t = 1, "sum_t2", "ce": -sum_c p_c log q_c, mean over the batch; p = softmax(teacher), q = softmax(student)
    p2 = 1 / (1 + math.exp(-2))
    kd = (math.log(1 + math.exp(-2)) * 0.5 + math.log(1 + math.exp(2)) * 0.5
          + p2 * math.log(1 + math.exp(-1)) + (1 - p2) * math.log(1 + math.exp(1))) / 2
    # cosine on real tokens: (1 - 0) for [1,0]·[0,1], (1 - 1) for [0,2]·[0,3], (1 - 1) for [1,1]·[1,1]: mean 1/3
    cos = 1 / 3
    # MSE on real tokens, / (n_valid * H): (1 + 1) + (0 + 1) + 0 = 3 over 3 tokens x 2 = 0.5
    mse = 0.5
    terms = {"ce": 1.0, "kd": 1.0, "cos": 1.0, "hidden": 1.0}
    out = Objective(terms, config(temperature=1.0, divergence="ce"), True)(student, teacher)
    assert out["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert out["kd"].item() == pytest.approx(kd, abs=1e-6)
    # "kl" (text KD's default, as distiller.py): the soft CE less the teachers' entropy, ln 2 and H(0.119, 0.881)
    entropy = (math.log(2) - p2 * math.log(p2) - (1 - p2) * math.log(1 - p2)) / 2
    kl = Objective(terms, config(temperature=1.0), True)(student, teacher)["kd"].item()
    assert kl == pytest.approx(kd - entropy, abs=1e-6) and kl == pytest.approx(0.2504558, abs=1e-6)
    assert out["cos"].item() == pytest.approx(cos, abs=1e-6)
    assert out["hidden"].item() == pytest.approx(mse, abs=1e-6)
    assert out["loss"].item() == pytest.approx(ce + kd + cos + mse, abs=1e-6)


def test_weights_multiply_and_zero_weights_are_off():
    student, teacher = batch()
    cfg = config(temperature=1.0)
    one = Objective({"ce": 1.0, "kd": 1.0}, cfg, True)(student, teacher)
    weighed = Objective({"ce": 0.5, "kd": 3.0, "cos": 0.0}, cfg, True)
    assert weighed.names == ["ce", "kd"]  # the record's loss_terms
    out = weighed(student, teacher)
    assert out["loss"].item() == pytest.approx(0.5 * one["ce"].item() + 3.0 * one["kd"].item(), abs=1e-6)
    assert set(out) == {"loss", "ce", "kd"}
    # weight exactly 1: the sum of the terms, bit for bit (the recipes' losses before the registry)
    assert torch.equal(one["loss"], one["ce"] + one["kd"])


def test_without_teachers_only_ce_and_nothing_on_still_backpropagates():
    student, _ = batch()
    ce_only = Objective({"ce": 1.0, "kd": 1.0, "cos": 1.0}, config(), teachers=False)
    assert ce_only.names == ["ce"] and not ce_only.needs("teacher")
    logits = student.logits.clone().requires_grad_(True)
    out = Objective({"kd": 0.0}, config(), True)(StudentOut(logits=logits))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_the_objective_a_recipe_s_settings_weigh():
    s = distilbert.Settings()
    obj = Objective.of(s, config(), teachers=True)
    assert obj.names == ["ce", "kd", "cos"] and obj.needs(objective.HIDDEN) and obj.needs("teacher")
    assert objective.reads_states(s) and not objective.reads_states(text_kd.Settings())
    stage2 = Objective.of(tinybert.Settings(), config(), teachers=False, baseline={"ce": 1.0}, terms=("ce", "kd"))
    assert stage2.names == ["ce"]  # TinyBERT's CE-only baseline trains with CE alone, weight 1
    assert Objective.of(tinybert.Settings(), config(), teachers=True, terms=("ce", "kd")).names == ["kd"]
