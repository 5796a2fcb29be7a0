"""Losses against values worked out by hand (math module), plus invariants."""

from __future__ import annotations

import math

import pytest
import torch

from mtd_cache.core.errors import MtdError
from mtd_cache.core.losses import KD_SCALES, NonFiniteLossError, check_finite, hard_ce, kd_loss, mean_teacher_logits
from mtd_cache.core.state_losses import (
    attention_layer_map,
    attention_mse,
    cosine_hidden_loss,
    hidden_mse,
    tinybert_layer_map,
)

REL = 1e-5


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs)


def close(actual: torch.Tensor | float, expected: float) -> bool:
    if isinstance(actual, torch.Tensor):
        actual = float(actual.detach())
    return math.isclose(actual, expected, rel_tol=REL, abs_tol=1e-7)


# Two examples, two classes, two teachers. Teacher means: [[2, 0], [1, 0]].
STUDENT = [[0.0, 0.0], [1.0, 0.0]]
TEACHERS = [[[1.0, 0.0], [3.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]]  # (B=2, k=2, C=2)


def two_class_ce_at_t2() -> tuple[float, float]:
    """Per-example soft CE at t = 2, by hand.

    Example 0: teacher/t = [1, 0], student/t = [0, 0] -> q = [1/2, 1/2], CE = log 2.
    Example 1: teacher/t = student/t = [0.5, 0] -> CE = entropy of p = sigmoid(0.5).
    """
    p1 = sigmoid(0.5)
    return math.log(2.0), entropy([p1, 1.0 - p1])


# --- hard CE and teacher mean ---------------------------------------------------------


def test_hard_ce_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    # softmax = [1/4, 3/4]: label 1 -> -log(3/4), label 0 -> -log(1/4)
    expected = (math.log(4.0 / 3.0) + math.log(4.0)) / 2
    assert close(hard_ce(logits, torch.tensor([1, 0])), expected)


def test_mean_teacher_logits_averages_logits():
    mean = mean_teacher_logits(torch.tensor(TEACHERS))
    assert mean.tolist() == [[2.0, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="B, k, C"):
        mean_teacher_logits(torch.zeros(2, 3))


# --- KD: hand values for every scale and divergence -----------------------------------


def test_kd_each_scale_by_hand_two_classes():
    ce0, ce1 = two_class_ce_at_t2()
    expected = {"sum_t2": (ce0 + ce1) / 2 * 4.0, "sum": (ce0 + ce1) / 2, "mean": (ce0 + ce1) / 4}
    student, teachers = torch.tensor(STUDENT), torch.tensor(TEACHERS)
    for scale in KD_SCALES:
        assert close(kd_loss(student, teachers, temperature=2.0, scale=scale), expected[scale])


def test_kd_kl_by_hand_two_classes():
    ce0, _ = two_class_ce_at_t2()
    p0 = sigmoid(1.0)
    kl0 = ce0 - entropy([p0, 1.0 - p0])  # example 1 matches the teachers' mean: KL = 0
    got = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHERS), 2.0, "sum", "kl")
    assert close(got, kl0 / 2)
    got_t2 = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHERS), 2.0, "sum_t2", "kl")
    assert close(got_t2, kl0 / 2 * 4.0)


def test_kd_three_classes_mean_divides_by_classes():
    # Uniform student: q = 1/3 each, so CE = log 3 whatever the teacher.
    student = torch.zeros(1, 3)
    teacher = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))  # p = [1/6, 2/6, 3/6] at t = 1
    assert close(kd_loss(student, teacher, scale="mean"), math.log(3.0) / 3)
    assert close(kd_loss(student, teacher, scale="sum"), math.log(3.0))
    assert close(kd_loss(student, teacher, scale="sum_t2"), math.log(3.0))
    assert close(kd_loss(student, teacher, 2.0, "sum_t2"), 4.0 * math.log(3.0))
    kl = math.log(3.0) - entropy([1 / 6, 2 / 6, 3 / 6])
    assert close(kd_loss(student, teacher, scale="sum", divergence="kl"), kl)
    assert close(kd_loss(student, teacher, scale="mean", divergence="kl"), kl / 3)


def test_kd_logits_are_averaged_before_softmax():
    # Teachers [2, 0] and [0, 0]: mean logits [1, 0] -> p = sigmoid(1). Averaging
    # probabilities instead would give p = (sigmoid(2) + 1/2) / 2.
    teachers = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    student = torch.tensor([[1.0, 0.0]])
    p, q = sigmoid(1.0), sigmoid(1.0)
    expected = -(p * math.log(q) + (1 - p) * math.log(1 - q))
    assert close(kd_loss(student, teachers, scale="sum"), expected)
    wrong_p = (sigmoid(2.0) + 0.5) / 2
    wrong = -(wrong_p * math.log(q) + (1 - wrong_p) * math.log(1 - q))
    assert not close(kd_loss(student, teachers, scale="sum"), wrong)


def test_kd_accepts_already_averaged_teacher():
    student = torch.tensor(STUDENT)
    averaged = kd_loss(student, torch.tensor([[2.0, 0.0], [1.0, 0.0]]), 2.0)
    assert close(averaged, float(kd_loss(student, torch.tensor(TEACHERS), 2.0)))


# --- KD invariants --------------------------------------------------------------------


def test_kd_k1_equals_single_teacher():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    for scale in KD_SCALES:
        one = kd_loss(student, teacher[:, None, :], 3.0, scale)
        assert close(one, float(kd_loss(student, teacher, 3.0, scale)))


def test_kd_teacher_order_does_not_matter():
    gen = torch.Generator().manual_seed(1)
    student, teachers = torch.randn(4, 5, generator=gen), torch.randn(4, 3, 5, generator=gen)
    base = float(kd_loss(student, teachers, 2.0))
    for perm in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):
        assert close(kd_loss(student, teachers[:, perm], 2.0), base)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_minimal_at_teacher_mean(temperature):
    gen = torch.Generator().manual_seed(2)
    teachers = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    student = teachers.mean(dim=1).clone().requires_grad_(True)
    loss = kd_loss(student, teachers, temperature, "sum_t2", "ce")
    loss.backward()
    assert torch.allclose(student.grad, torch.zeros_like(student), atol=1e-12)
    # "ce" equals the teachers' entropy there (times t^2), "kl" is zero.
    p = torch.softmax(teachers.mean(dim=1) / temperature, dim=-1).tolist()
    mean_entropy = sum(entropy(row) for row in p) / len(p)
    assert close(loss, mean_entropy * temperature**2)
    assert abs(float(kd_loss(student.detach(), teachers, temperature, "sum_t2", "kl"))) < 1e-12
    # Any other student is worse.
    moved = student.detach() + torch.tensor([0.3, 0.0, 0.0, 0.0, -0.2], dtype=torch.float64)
    assert float(kd_loss(moved, teachers, temperature)) > float(loss.detach())


def test_kd_kl_and_ce_same_gradient():
    gen = torch.Generator().manual_seed(3)
    teachers = torch.randn(2, 3, 4, generator=gen)
    grads = []
    for divergence in ("ce", "kl"):
        student = torch.randn(2, 4, generator=torch.Generator().manual_seed(4)).requires_grad_()
        kd_loss(student, teachers, 2.0, divergence=divergence).backward()
        grads.append(student.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_kd_rejects_unknown_choices_listing_valid():
    student, teacher = torch.zeros(1, 2), torch.zeros(1, 2)
    with pytest.raises(ValueError, match="sum_t2, sum, mean"):
        kd_loss(student, teacher, scale="batchmean")
    with pytest.raises(ValueError, match="ce, kl"):
        kd_loss(student, teacher, divergence="js")
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        kd_loss(student, torch.zeros(1, 3))


# --- TinyBERT hidden and attention MSE ------------------------------------------------


def test_hidden_mse_unmasked_by_hand():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert close(hidden_mse(student, torch.zeros(1, 2, 2)), (1 + 4 + 9 + 16) / 4)


def test_hidden_mse_masked_by_hand():
    student = torch.tensor([[[1.0, 1.0], [9.0, 9.0]], [[2.0, 2.0], [3.0, 3.0]]])
    teacher = torch.zeros(2, 2, 2)
    mask = torch.tensor([[1, 0], [1, 1]])
    # valid: (1+1) + (4+4) + (9+9) = 28 over n_valid * H = 3 * 2
    assert close(hidden_mse(student, teacher, mask), 28 / 6)
    assert close(hidden_mse(student, teacher), (2 + 162 + 8 + 18) / 8)


def test_hidden_mse_ignores_padding():
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    before = float(hidden_mse(student, teacher, mask))
    student[~mask] = 1e6
    teacher[~mask] = float("nan")
    assert close(hidden_mse(student, teacher, mask), before)


def test_attention_mse_threshold_and_mask_by_hand():
    # one example, one head, L = 2, one valid token: only pair (0, 0) counts
    student = torch.tensor([[[[1.0, -9999.0], [5.0, -9998.0]]]])
    teacher = torch.tensor([[[[0.0, -10000.0], [1.0, -10001.0]]]])
    # thresholded: student [[1, 0], [5, 0]], teacher [[0, 0], [1, 0]] -> (1 + 16) / 4
    assert close(attention_mse(student, teacher), 17 / 4)
    assert close(attention_mse(student, teacher, torch.tensor([[1, 0]])), 1.0)


def test_attention_mse_threshold_zeroes_both_sides():
    student = torch.tensor([[[[-150.0, -99.0]]]])
    teacher = torch.tensor([[[[-101.0, -100.0]]]])
    # -150, -101, -100 <= -100 -> 0; -99 stays: ((0-0)^2 + (-99-0)^2) / 2
    assert close(attention_mse(student, teacher), 99.0**2 / 2)
    # a lower threshold keeps -150 and -101, zeroes nothing else
    assert close(attention_mse(student, teacher, threshold=-1e3), (49.0**2 + 1.0) / 2)


def test_attention_mse_masked_pairs_over_batch_and_heads():
    # B = 2, h = 2, L = 3, lengths 1 and 2; student 1 then 3 everywhere, teacher 0
    student = torch.ones(2, 2, 3, 3)
    student[1] = 3.0
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    # valid pairs: h * 1^2 = 2 with error 1, h * 2^2 = 8 with error 9 -> 74 / 10
    assert close(attention_mse(student, torch.zeros(2, 2, 3, 3), mask), 74 / 10)


def test_attention_mse_ignores_padding():
    student, teacher = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    before = float(attention_mse(student, teacher, mask))
    valid = mask.bool()
    pairs = (valid[:, :, None] & valid[:, None, :])[:, None].expand_as(student)
    student[~pairs] = 50.0
    teacher[~pairs] = -7.0
    assert close(attention_mse(student, teacher, mask), before)


# --- DistilBERT cosine loss -----------------------------------------------------------


def test_cosine_loss_by_hand_and_padding():
    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, -2.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    mask = torch.tensor([[1, 1, 0]])
    expected = ((1 - 1.0) + (1 - 1 / math.sqrt(2.0))) / 2
    assert close(cosine_hidden_loss(student, teacher, mask), expected)
    student[0, 2] = torch.tensor([-8.0, 4.0])
    teacher[0, 2] = torch.tensor([1.0, 1.0])
    assert close(cosine_hidden_loss(student, teacher, mask), expected)


def test_cosine_loss_matches_hf_cosine_embedding_loss():
    # HF distiller.py: masked_select, then CosineEmbeddingLoss(reduction="mean"), target 1
    gen = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(3, 5, 8, generator=gen), torch.randn(3, 5, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    sel = mask.bool().unsqueeze(-1).expand_as(student)
    s, t = student.masked_select(sel).view(-1, 8), teacher.masked_select(sel).view(-1, 8)
    hf = torch.nn.CosineEmbeddingLoss(reduction="mean")(s, t, torch.ones(s.size(0)))
    assert close(cosine_hidden_loss(student, teacher, mask), float(hf))


def test_masks_must_select_something_and_fit():
    with pytest.raises(ValueError, match="no tokens"):
        hidden_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="mask shape"):
        cosine_hidden_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(2, 1))


# --- gradients reach the student only -------------------------------------------------


def _loss_cases():
    gen = torch.Generator().manual_seed(6)
    mask = torch.tensor([[1, 0], [1, 1]])
    cases = {
        "kd": (lambda s, t: kd_loss(s, t, 2.0), (2, 3), (2, 4, 3)),
        "kd_kl": (lambda s, t: kd_loss(s, t, 2.0, divergence="kl"), (2, 3), (2, 3)),
        "hidden": (lambda s, t: hidden_mse(s, t, mask), (2, 2, 3), (2, 2, 3)),
        "hidden_all": (hidden_mse, (2, 2, 3), (2, 2, 3)),
        "attn": (lambda s, t: attention_mse(s, t, mask), (2, 1, 2, 2), (2, 1, 2, 2)),
        "attn_all": (attention_mse, (2, 1, 2, 2), (2, 1, 2, 2)),
        "cos": (lambda s, t: cosine_hidden_loss(s, t, mask), (2, 2, 3), (2, 2, 3)),
    }
    for name, (fn, s_shape, t_shape) in cases.items():
        s = torch.randn(*s_shape, generator=gen).requires_grad_(True)
        t = torch.randn(*t_shape, generator=gen).requires_grad_(True)
        yield name, fn, s, t


def test_gradients_reach_student_not_teacher():
    for name, fn, student, teacher in _loss_cases():
        loss = fn(student, teacher)
        loss.backward()
        assert student.grad is not None and student.grad.abs().sum() > 0, name
        assert teacher.grad is None, name
        assert not fn(student.detach(), teacher).requires_grad, name


# --- layer maps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "teacher, student, expected",
    [
        (12, 4, [0, 3, 6, 9, 12]),
        (12, 6, [0, 2, 4, 6, 8, 10, 12]),
        (6, 3, [0, 2, 4, 6]),
        (6, 2, [0, 3, 6]),
    ],
)
def test_tinybert_layer_map(teacher, student, expected):
    assert tinybert_layer_map(teacher, student) == expected
    assert attention_layer_map(teacher, student) == expected[1:]


def test_attention_map_matches_reference_indexing():
    # task_distill.py: teacher_atts[i * ratio + ratio - 1] (0-based) for i in range(L_S)
    ratio = 12 // 4
    reference = [i * ratio + ratio - 1 for i in range(4)]
    assert [g - 1 for g in attention_layer_map(12, 4)] == reference == [2, 5, 8, 11]


def test_layer_map_refuses_non_multiple_naming_both():
    with pytest.raises(MtdError, match=r"12.*5"):
        tinybert_layer_map(12, 5)
    with pytest.raises(MtdError):
        attention_layer_map(12, 5)


def test_given_layer_map_is_validated():
    assert tinybert_layer_map(12, 5, [0, 2, 4, 7, 10, 12]) == [0, 2, 4, 7, 10, 12]
    assert attention_layer_map(12, 5, [0, 2, 4, 7, 10, 12]) == [2, 4, 7, 10, 12]
    for bad in ([0, 2, 4, 7, 10], [1, 2, 4, 7, 10, 12], [0, 2, 2, 7, 10, 12], [0, 2, 4, 7, 10, 13]):
        with pytest.raises(MtdError, match="layer map"):
            tinybert_layer_map(12, 5, bad)


# --- fail fast ------------------------------------------------------------------------


def test_check_finite_names_the_step():
    check_finite(torch.tensor(1.5), step=3)
    check_finite(0.0, step=4)
    with pytest.raises(NonFiniteLossError, match="step 17"):
        check_finite(torch.tensor(float("nan")), step=17)
    with pytest.raises(MtdError, match=r"kd is inf at step 5"):
        check_finite(torch.tensor(float("inf")), step=5, name="kd")


def test_the_skew_divergences_at_their_ends_are_the_plain_kls():
    """alpha 0 and 1, which the settings accept, mix nothing in (math.log(0) raised here before)."""
    from mtd_cache.core.losses import per_class

    g = torch.Generator().manual_seed(0)
    lp, lq = (torch.log_softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1) for _ in range(2))
    torch.testing.assert_close(per_class(lq, lp, "skew_kl", alpha=0.0), per_class(lq, lp, "kl"))
    torch.testing.assert_close(per_class(lq, lp, "skew_rkl", alpha=0.0), per_class(lq, lp, "reverse_kl"))
    assert per_class(lq, lp, "skew_kl", alpha=1.0).abs().max() == 0
    assert per_class(lq, lp, "skew_rkl", alpha=1.0).abs().max() == 0
