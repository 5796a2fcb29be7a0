"""Loss functions for multiple-teacher distillation: pure functions on tensors.

Every teacher-side input is detached: gradients reach the student only (the intermediate-state losses of
DistilBERT and TinyBERT, and TinyBERT's layer map, are in ``state_losses``). Shapes use
B = batch, k = teachers, C = classes, L = sequence length, H = hidden size,
h = attention heads. Half-precision inputs are computed in float32.

Scale conventions of the student recipes (recorded in every run's config):

==============  ===========================  ========  ==========  ===
recipe          terms                        KD scale  divergence  t
==============  ===========================  ========  ==========  ===
ResNet-20/8     hard_ce + kd_loss            "sum_t2"  "ce"        t
DistilBERT      hard_ce + kd_loss            "sum_t2"  "kl"        t
                + cosine_hidden_loss
TinyBERT IMD    hidden_mse (L_S + 1 layers)  n/a       n/a         n/a
(stage 1)       + attention_mse (L_S layers)
TinyBERT PLD    kd_loss                      "mean"    "ce"        1
(stage 2)
==============  ===========================  ========  ==========  ===

Sources:

* ResNet: Hinton et al. 2015, sec. 2 -- soft-target gradients scale as 1/t^2, so the
  KD term is multiplied by t^2 (sum over classes, mean over the batch). Note that
  knowledge-distillation-pytorch (model/net.py, ``loss_fn_kd``) uses ``nn.KLDivLoss()``
  with its default element-wise mean, i.e. 1/C of this; we follow Hinton.
* DistilBERT: HF examples/research_projects/distillation/distiller.py, ``step()``:
  ``KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T**2``, and
  ``CosineEmbeddingLoss(reduction="mean")`` with target 1 on the last hidden states
  ``masked_select``-ed by the attention mask.
* TinyBERT: task_distill.py, ``main()``: stage 1 sums ``MSELoss()`` (mean over every
  entry, padding included) over the mapped layers, student states through one shared
  ``fit_dense`` (transformer/modeling.py); stage 2 ``soft_cross_entropy`` =
  ``(-softmax(t) * log_softmax(s)).mean()`` at ``--temperature`` 1 (the default).

KD target rules (``multi_teacher_kd``; w_i the teachers' weights, summing to 1, default 1/k):

* "mean_logits" (the paper's eq. 9, the default): KD to softmax(sum_i w_i z_i / t);
* "mean_probs": KD to sum_i w_i softmax(z_i / t), the mixture of the teachers' softened distributions;
* "mean_losses": sum_i w_i KD(z_S, z_i), the teachers' KD losses averaged. With "ce" it equals
  "mean_probs" (the soft cross-entropy is linear in the target); with "kl" it exceeds it by
  H(p_mix) - sum_i w_i H(p_i) >= 0 (times the scale), a constant for the student: the same gradients.

"mean" equals "sum" divided by C: for a 2-class task TinyBERT's prediction loss is
half of Hinton's un-scaled term. "kl" and "ce" differ by the teacher entropy, a
constant for the student, so their gradients are identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .errors import MtdError
from .weighing import NO_PRIOR_RULES, example_weights, min_norm_weights

KD_SCALES: tuple[str, ...] = ("sum_t2", "sum", "mean")
KD_DIVERGENCES: tuple[str, ...] = ("ce", "kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "taid")
# how k teachers make one target (``multi_teacher_kd``); "random_subset" draws j of them per step first (the KD term)
BASE_RULES: tuple[str, ...] = ("mean_logits", "mean_probs", "mean_losses", "ca_mkd", "entropy", "ae_kd", "min_ce",
                               "avg_ce")
KD_RULES: tuple[str, ...] = (*BASE_RULES, "random_subset")
NEG_INF = float("-inf")


class NonFiniteLossError(MtdError):
    """A loss became NaN or infinite during training."""


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _check_kd(temperature: float, scale: str, divergence: str) -> None:
    _check_choice("scale", scale, KD_SCALES)
    _check_choice("divergence", divergence, KD_DIVERGENCES)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    # Softmax and squared errors in half precision lose too much; float64 is kept.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _student_teacher(
    student: torch.Tensor, teacher: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes match; return (student, detached teacher) in one float dtype."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}"
        )
    s = _compute_dtype(student)
    return s, teacher.detach().to(s.dtype)


def hard_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with gold labels: mean over the batch of -log softmax(z^S)[y].

    Shapes: student_logits (B, C), labels (B,) int64. Returns a scalar.
    """
    return F.cross_entropy(_compute_dtype(student_logits), labels)


def mean_teacher_logits(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Average k teachers' raw logits: (B, k, C) -> (B, C), mean over k.

    The paper (eq. 9) averages logits, not probabilities, before the softmax.
    """
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher logits must be (B, k, C), got {tuple(teacher_logits.shape)}")
    return _compute_dtype(teacher_logits).mean(dim=1)


def _reduce_kd(per_class: torch.Tensor, scale: str, temperature: float) -> torch.Tensor:
    if scale == "mean":
        return per_class.mean()
    per_example = per_class.sum(dim=-1).mean()
    return per_example * temperature**2 if scale == "sum_t2" else per_example


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    scale: str = "sum_t2",
    divergence: str = "ce",
) -> torch.Tensor:
    """Knowledge distillation from the mean of k teachers' logits (paper eq. 9).

    With z^T = mean_i z^{T_i} (logits averaged before the softmax), p = softmax(z^T/t),
    q = softmax(z^S/t), per example:

        "ce": -sum_c p_c log q_c            (soft cross-entropy, the paper's KD term)
        "kl":  sum_c p_c (log p_c - log q_c) = ce - H(p)   (what nn.KLDivLoss computes)

    Both have the same gradient for the student; "kl" is 0 at the optimum q = p.
    Scale (see the module table): "sum_t2" = sum over classes, mean over batch, times
    t^2 (Hinton; HF distiller.py); "sum" = the same without t^2; "mean" = mean over
    batch and classes, no t^2 (TinyBERT's soft_cross_entropy).

    Shapes: student_logits (B, C); teacher_logits (B, C) already averaged, or
    (B, k, C) averaged here. Returns a scalar. The teacher side is detached.
    """
    if teacher_logits.dim() == 3:
        teacher_logits = mean_teacher_logits(teacher_logits.detach())
    return _one_target_kd(student_logits, teacher_logits, temperature, scale, divergence)


def _one_target_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, scale: str,
                   divergence: str, **extra: Any) -> torch.Tensor:
    """KD to one target's logits (B, C): both sides softened by t, the divergence reduced by ``scale``."""
    _check_kd(temperature, scale, divergence)
    student, teacher = _student_teacher(student_logits, teacher_logits)
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    return _soft_target_loss(log_q, log_p, scale, divergence, float(temperature), **extra)


def _soft_target_loss(log_q: torch.Tensor, log_p: torch.Tensor, scale: str, divergence: str,
                      temperature: float, beta: float = 0.5, alpha: float = 0.1,
                      interpolation: float | torch.Tensor | None = None) -> torch.Tensor:
    """The divergence of the student's softened distribution q from the target p, per class, then reduced by
    ``scale`` (t^2 under "sum_t2" for every divergence, as Hinton's gradient argument asks)."""
    return _reduce_kd(per_class(log_q, log_p, divergence, beta, alpha, interpolation), scale, temperature)


def per_class(log_q: torch.Tensor, log_p: torch.Tensor, divergence: str, beta: float = 0.5, alpha: float = 0.1,
              interpolation: float | torch.Tensor | None = None) -> torch.Tensor:
    """Each divergence as a sum over classes of these terms (p the target, q the student, both softened by t):

    * "ce":  -p log q;  "kl": p (log p - log q)  (the same gradients: they differ by H(p));
    * "reverse_kl": q (log q - log p), mode-seeking;
    * "jsd": generalised Jensen-Shannon with beta (GKD, Agarwal et al. 2024), m = beta p + (1 - beta) q:
      beta p (log p - log m) + (1 - beta) q (log q - log m); beta = 0 is forward KL(p || q) and beta = 1
      reverse KL(q || p) exactly (the mixture formula would vanish there: the limits GKD's gradients approach);
    * "skew_kl": KL(p || alpha p + (1 - alpha) q); "skew_rkl": KL(q || (1 - alpha) p + alpha q) (DistiLLM, Ko et
      al. 2024; the student's q inside the mixture carries its gradient); alpha 0 and 1 are the plain KLs;
    * "taid": -p_t log q with p_t = softmax((1 - i) log q' + i log p), q' the student detached and i the
      interpolation (TAID, Shing et al. 2025: the target moves from the student to the teachers as i grows).

    A term whose weighing distribution (p for "ce", "kl" and p's halves; q for the reverse ones) has no mass
    there, log -inf (a token store's padding or empty tail bucket), is 0 with no gradient, not 0 x inf.
    """
    p = log_p.exp()
    p_live = log_p > NEG_INF
    if divergence == "ce":
        return -p * torch.where(p_live, log_q, 0.0)
    if divergence == "kl" or (divergence == "jsd" and beta == 0.0):
        return p * torch.where(p_live, log_p - log_q, 0.0)
    if divergence == "taid":
        i = 1.0 if interpolation is None else interpolation
        target = F.softmax((1 - i) * log_q.detach() + i * log_p, dim=-1)
        return -target * log_q
    q = log_q.exp()
    q_live = log_q > NEG_INF
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return q * torch.where(q_live, log_q - log_p, 0.0)
    if divergence == "jsd":
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1.0 - beta))
        return beta * p * torch.where(p_live, log_p - log_m, 0.0) + \
            (1.0 - beta) * q * torch.where(q_live, log_q - log_m, 0.0)
    if divergence == "skew_kl":
        log_m = torch.logaddexp(log_p + math.log(alpha), log_q + math.log(1.0 - alpha)) if 0 < alpha < 1 else \
            (log_p if alpha >= 1 else log_q)
        return p * torch.where(p_live, log_p - log_m, 0.0)
    if divergence == "skew_rkl":
        log_m = torch.logaddexp(log_p + math.log(1.0 - alpha), log_q + math.log(alpha)) if 0 < alpha < 1 else \
            (log_q if alpha >= 1 else log_p)
        return q * torch.where(q_live, log_q - log_m, 0.0)
    raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(KD_DIVERGENCES)}")


def teacher_weights(weights: Sequence[float] | None, k: int) -> torch.Tensor | None:
    """Weights of k teachers as a (k,) float tensor summing to 1; None stays None (equal weights, 1/k)."""
    if weights is None:
        return None
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64)
    if w.shape != (k,):
        raise ValueError(f"{len(w)} teacher weights for {k} teachers")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"teacher weights must be finite, >= 0 and not all 0: {list(weights)}")
    return w / w.sum()


def combine_teacher_logits(teacher_logits: torch.Tensor, weights: Sequence[float] | torch.Tensor | None = None
                           ) -> torch.Tensor:
    """(B, k, C) -> (B, C): the teachers' logits averaged (equal weights) or weighted by ``weights`` (sum 1)."""
    if weights is None:
        return mean_teacher_logits(teacher_logits)
    z = _compute_dtype(teacher_logits)
    w = teacher_weights(weights, z.shape[1]).to(z.dtype).to(z.device)
    return torch.einsum("bkc,k->bc", z, w)


def multi_teacher_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    scale: str = "sum_t2",
    divergence: str = "ce",
    rule: str = "mean_logits",
    weights: Sequence[float] | torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
    interpolation: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """KD^k from k teachers by a target ``rule`` (module docstring; ``BASE_RULES``), teachers weighted by
    ``weights`` (a static prior), under ``divergence`` (``per_class``; ``beta`` for "jsd", ``alpha`` for the skew
    divergences, ``interpolation`` for "taid").

    The rules that weigh each example's teachers by what they output mix the teachers' softened distributions,
    p = sum_i w_i p_i, with weights detached from the graph (for "ce" and "kl" the same gradients as weighing
    their losses, the papers' form): ``weighing.example_weights`` ("ca_mkd", "entropy", "min_ce", "avg_ce"; the
    label rules read ``labels``) and ``weighing.min_norm_weights`` ("ae_kd", one weight per teacher per batch). At
    k = 1 every rule is plain KD.

    Shapes: student_logits (B, C); teacher_logits (B, k, C), or (B, C) already combined for "mean_logits"
    (what a store's ``mean_logits`` returns). ``weights`` (k,): >= 0, normalised here; None: 1/k each.
    Returns a scalar; the teacher side is detached.
    """
    _check_choice("rule", rule, BASE_RULES)
    extra = {"beta": beta, "alpha": alpha, "interpolation": interpolation}
    if rule == "mean_logits":
        if teacher_logits.dim() == 3:
            teacher_logits = combine_teacher_logits(teacher_logits.detach(), weights)
        return _one_target_kd(student_logits, teacher_logits, temperature, scale, divergence, **extra)
    if teacher_logits.dim() != 3:
        raise ValueError(f"rule {rule!r} needs each teacher's logits (B, k, C), got {tuple(teacher_logits.shape)}")
    k = teacher_logits.shape[1]
    if rule in NO_PRIOR_RULES and weights is not None and k > 1:
        raise ValueError(f"rule {rule!r} takes no teacher weights (a static prior has no meaning in it)")
    w = teacher_weights(weights, k) if weights is not None else torch.full((k,), 1.0 / k, dtype=torch.float64)
    _check_kd(temperature, scale, divergence)
    student = _compute_dtype(student_logits)
    teacher = teacher_logits.detach().to(student.dtype)
    if tuple(teacher.shape[::2]) != tuple(student.shape):
        raise ValueError(f"student shape {tuple(student.shape)} does not match teachers {tuple(teacher.shape)}")
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_pi = F.log_softmax(teacher / temperature, dim=-1)  # (B, k, C): each teacher's softened distribution
    if rule == "mean_losses":
        terms = [_soft_target_loss(log_q, log_pi[:, i], scale, divergence, float(temperature), **extra)
                 for i in range(k)]
        return sum(float(w[i]) * terms[i] for i in range(k))
    if rule == "mean_probs" or k == 1:
        mix = w.to(student.dtype).to(student.device)[None, :].expand(len(student), k)
    elif rule == "ae_kd":
        mix = min_norm_weights(_teacher_gradients(student, log_pi, temperature, scale, divergence, extra))
        mix = mix.to(student.dtype)[None, :].expand(len(student), k)
    else:
        mix = example_weights(rule, teacher, labels, temperature, None if weights is None else w)
    # log sum_i w_i softmax(z_i / t), computed in log space (a weight of 0 is log 0 = -inf: that teacher is out)
    log_p = torch.logsumexp(log_pi + torch.log(mix.to(student.dtype).to(student.device))[:, :, None], dim=1)
    return _soft_target_loss(log_q, log_p, scale, divergence, float(temperature), **extra)


def _teacher_gradients(student: torch.Tensor, log_pi: torch.Tensor, temperature: float, scale: str, divergence: str,
                       extra: dict) -> torch.Tensor:
    """(k, B*C): the gradient of each teacher's own KD loss with respect to the student's logits (detached)."""
    with torch.enable_grad():
        z = student.detach().requires_grad_()
        log_q = F.log_softmax(z / temperature, dim=-1)
        grads = [torch.autograd.grad(_soft_target_loss(log_q, log_pi[:, i].detach(), scale, divergence,
                                                       float(temperature), **extra), z, retain_graph=True)[0]
                 for i in range(log_pi.shape[1])]
    return torch.stack([g.reshape(-1) for g in grads])


def check_finite(loss: torch.Tensor | float, step: int, name: str = "loss") -> None:
    """Raise NonFiniteLossError naming the step when ``loss`` is NaN or infinite.

    Reads the value on the host (a device sync), so a loop may call it every N steps.
    """
    value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(f"{name} is {value} at step {step}; stopping the run")
