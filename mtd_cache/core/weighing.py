"""How much each teacher weighs, per example or per batch, from what the teachers (and the student) output.

The weights of the rules of ``losses.multi_teacher_kd`` that are not fixed in advance: ``example_weights``
(CA-MKD, entropy, MinCE, AvgCE: per example, from the teachers' logits and the label), ``min_norm_weights``
(AE-KD: per batch, the minimum-norm point of the teachers' gradients) and TAID's interpolation schedule
(``TaidSchedule``: per step, a run's state). Every weight is detached: gradients reach the student only through
the target it makes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LABEL_RULES: tuple[str, ...] = ("ca_mkd", "min_ce", "avg_ce")  # weights from each teacher's CE to the label
# rules a static prior (``teacher_weights``) has no meaning in: one teacher chosen per example, a min-norm point
NO_PRIOR_RULES: tuple[str, ...] = ("min_ce", "ae_kd")


def example_weights(rule: str, teacher_logits: torch.Tensor, labels: torch.Tensor | None, temperature: float,
                    prior: torch.Tensor | None = None) -> torch.Tensor:
    """Each example's weights over its k teachers, (B, k), rows summing to 1, detached:

    * "ca_mkd" (confidence-aware MKD, Zhang, Chen and Wang, ICASSP 2022): w_i = (1 - softmax_i(CE_i)) / (k - 1),
      CE_i the cross-entropy of teacher i's raw logits to the label, the softmax taken over the teachers
      (the authors' CAMKD.py; its KD term also divides by k, a constant we leave to ``alpha_kd``);
    * "entropy" (Kwon et al., ICASSP 2020): softmax over the teachers of -H(p_i), p_i = softmax(z_i / t): the
      surer a teacher on an example, the more it weighs;
    * "min_ce": the teacher with the lowest CE to the label, alone (FuseLLM's MinCE, Wan et al. 2024; ties: the
      first); "avg_ce": softmax over the teachers of -CE_i (FuseLLM's AvgCE).

    ``prior`` (k,), a static weight per teacher (``teacher_weights``), multiplies them, renormalised ("min_ce"
    takes none). At k = 1 the weight is 1 (CA-MKD's 1/(k - 1) undefined there: plain KD)."""
    z = teacher_logits.detach()  # in the dtype given: multi_teacher_kd hands float32 or float64
    b, k, _ = z.shape
    if k == 1:
        return torch.ones((b, 1), dtype=z.dtype, device=z.device)
    if rule in LABEL_RULES:
        if labels is None:
            raise ValueError(f"rule {rule!r} weighs teachers by their cross-entropy to the label: it needs labels")
        ce = -F.log_softmax(z, dim=-1).gather(-1, labels.view(b, 1, 1).expand(b, k, 1).long()).squeeze(-1)
        if rule == "ca_mkd":
            w = (1.0 - F.softmax(ce, dim=1)) / (k - 1)
        elif rule == "avg_ce":
            w = F.softmax(-ce, dim=1)
        else:
            w = F.one_hot(ce.argmin(dim=1), k).to(z.dtype)
    elif rule == "entropy":
        log_p = F.log_softmax(z / temperature, dim=-1)
        w = F.softmax((log_p.exp() * log_p).sum(-1), dim=1)  # softmax of -H
    else:
        raise ValueError(f"rule {rule!r} has no per-example weights")
    if prior is not None and rule != "min_ce":
        w = w * prior.to(w.dtype).to(w.device)[None, :]
        w = w / w.sum(dim=1, keepdim=True)
    return w.detach()


def min_norm_weights(grads: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """The point of the simplex whose combination of the rows of ``grads`` (k, D) has the least norm, (k,) float64:
    AE-KD's teacher weights (Du et al., NeurIPS 2020: the teachers' KD gradients, here with respect to the
    student's logits, combined into the minimum-norm point of their convex hull), found by Frank-Wolfe on the
    Gram matrix as MGDA solves it (Sener and Koltun 2018), each step's length exact. Detached."""
    g = grads.detach().to(torch.float64)
    gram = g @ g.T
    k = len(gram)
    w = torch.full((k,), 1.0 / k, dtype=torch.float64, device=g.device)
    for _ in range(iterations):
        gw = gram @ w
        j = int(gw.argmin())
        vv, vu, uu = float(w @ gw), float(gw[j]), float(gram[j, j])
        denom = vv - 2 * vu + uu
        if denom <= 1e-30:
            break
        step = min(max((vv - vu) / denom, 0.0), 1.0)
        if step < 1e-12:
            break
        w = (1 - step) * w
        w[j] += step
    return w


class TaidSchedule:
    """TAID's interpolation i, from ``start`` to ``end`` over a run's steps (Shing et al., ICLR 2025): after each
    step, with the relative change of the KD loss d = (L_prev - L) / (L_prev + 1e-15), the momentum
    m <- beta m + (1 - beta) d and i <- min(end, max(i_linear, i + alpha sigmoid(m) (1 - i))), i_linear the straight
    line from ``start`` to ``end`` at this step's fraction of the run. Its state (i, m, L_prev, step) is a run's
    state: saved in every checkpoint, restored on resume."""

    def __init__(self, start: float = 0.4, end: float = 1.0, alpha: float = 5e-4, beta: float = 0.99):
        self.start, self.end, self.alpha, self.beta = float(start), float(end), float(alpha), float(beta)
        self.total = 0
        self.value, self.momentum, self.previous, self.step = float(start), 0.0, math.inf, 0

    def update(self, loss: float) -> None:
        self.step += 1
        if math.isinf(self.previous):
            self.previous = float(loss)
            return
        change = (self.previous - loss) / (self.previous + 1e-15)
        self.momentum = self.beta * self.momentum + (1 - self.beta) * change
        line = self.start + (self.end - self.start) * (self.step / self.total if self.total else 0.0)
        grown = self.value + self.alpha * (1.0 / (1.0 + math.exp(-self.momentum))) * (1.0 - self.value)
        self.value = min(self.end, max(line, grown))
        self.previous = float(loss)

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "momentum": self.momentum, "previous": self.previous, "step": self.step,
                "total": self.total}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.momentum = float(state["value"]), float(state["momentum"])
        self.previous, self.step, self.total = float(state["previous"]), int(state["step"]), int(state["total"])
