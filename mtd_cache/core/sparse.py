"""Sparse multi-teacher targets of a language model's tokens: exact where they can be, bounded where not.

A language model's output per token spans its whole vocabulary V (32k-150k ids); a cache keeps a few ids. For a
pool of n teachers sharing a tokenizer, each token keeps (``sparse_batch``, B tokens at once):

* U, the **pool-union support**: the union over the n teachers of each one's top-k ids (|U| between k and n k);
* every teacher's raw logit on every id of U, ``z`` (n, |U|);
* every teacher's **complement log-sum-exp** at each temperature T of a grid, ``c_t(T) = logsumexp(z_t[V \\ U] / T)``
  (n, G), computed from the dense logits; ``-inf`` when U is the whole vocabulary (an empty complement: no mass,
  never an invented bucket).

With those, teacher t's normaliser at T is ``L_t = logaddexp(logsumexp(z_t[U] / T), c_t(T))``, its log-probability
on U ``z_t[U] / T - L_t`` and its tail log-mass ``c_t(T) - L_t``: the tail is never log(1 - kept mass), which
cancels in float32 once the kept mass passes 1 - 1e-7. Any subset S of the pool, weights w summing to 1, then has
(``subset_target``):

* ``mean_probs``: p[U] = sum_t w_t p_t[U] and one tail bucket sum_t w_t tail_t: **exact** (as a |U| + 1-bucket
  distribution), in log space;
* ``mean_losses``: each teacher's own |U| + 1-bucket distribution, weighed in the loss: **exact** likewise;
* ``mean_logits``: the mean logits sum_t w_t z_t[U] / T are exact on U, but the tail of their softmax,
  sum over V \\ U of exp(sum_t w_t z_t,v / T), is not stored: by Hölder it lies between 0 and
  prod_t exp(c_t(T))^w_t = exp(sum_t w_t c_t(T)). The target takes that bound as its tail bucket (the one choice
  whose error is bounded and known) and reports, per token, how far the true tail can be below it: ``bound``,
  the bucket's log-mass (the target's probabilities on U are exact up to the factor 1 - that mass).

The student's side is dense at training time, so its tail bucket is exact too: ``student_buckets`` takes
logsumexp over V \\ U of its own logits. The |U| + 1-bucket divergence (``bucket_kd``) is then exact for the bucketed
distributions and, for forward KL, a lower bound of the dense KL (the log-sum inequality: merging the tail's ids
can only lose divergence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .losses import per_class

SPARSE_RULES = ("mean_probs", "mean_losses", "mean_logits")
NEG = float("-inf")


@dataclass
class SparseBatch:
    """What a cache keeps of B tokens for a pool of n teachers, padded to the widest support of the batch: the
    union supports, every teacher's logits on them, each teacher's complement log-sum-exp at each temperature of
    ``temperatures``. Padding: ``mask`` False (its ids 0, its logits anything)."""

    ids: torch.Tensor  # (B, u) int64, each row ascending over its valid entries
    mask: torch.Tensor  # (B, u) bool: the valid entries
    logits: torch.Tensor  # (B, n, u): raw logits on the ids
    tails: torch.Tensor  # (B, n, G) float32: logsumexp(z_t[V \ U] / T_g); -inf: U is the vocabulary
    temperatures: tuple[float, ...]

    @property
    def width(self) -> torch.Tensor:
        """|U| of each token, (B,)."""
        return self.mask.sum(-1)

    def to(self, device: torch.device | str) -> SparseBatch:
        """The same batch on ``device``."""
        return SparseBatch(self.ids.to(device), self.mask.to(device), self.logits.to(device), self.tails.to(device),
                           self.temperatures)

    def members(self, vocab: int) -> torch.Tensor:
        """(B, V) bool: which ids of a ``vocab``-id vocabulary each token's support holds (padding holds none)."""
        out = torch.zeros((len(self.ids), vocab), dtype=torch.bool, device=self.ids.device)
        rows = torch.arange(len(self.ids), device=self.ids.device)[:, None].expand_as(self.ids)
        out[rows[self.mask], self.ids[self.mask]] = True
        return out


def sparse_batch(dense: torch.Tensor, k: int, temperatures: Sequence[float], dtype=torch.float16) -> SparseBatch:
    """B tokens of the cache from their teachers' dense logits (B, n, V): per token the ascending union of each
    teacher's top-``k`` ids, the logits on it (as ``dtype``), and each teacher's logsumexp over the rest of the
    vocabulary at each temperature, in float64 from the dense logits and stored as float32 (-inf: nothing rests)."""
    b, n, v = dense.shape
    top = dense.topk(min(k, v), dim=-1).indices.reshape(b, -1)  # (B, n k)
    member = torch.zeros((b, v), dtype=torch.bool, device=dense.device)
    member.scatter_(1, top, True)
    width = member.sum(-1)
    u = int(width.max())
    # each row's members first, ascending (a stable sort of "not a member" keeps the ids' order)
    order = torch.sort((~member).to(torch.int8), dim=1, stable=True).indices[:, :u]
    mask = torch.arange(u, device=dense.device)[None, :] < width[:, None]
    ids = torch.where(mask, order, torch.zeros_like(order))
    logits = torch.gather(dense, 2, ids[:, None, :].expand(b, n, u)).to(dtype)
    return SparseBatch(ids, mask, logits, complement_lse(dense, member, temperatures), tuple(temperatures))


def complement_lse(dense: torch.Tensor, member: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """(B, n, G) float32: each teacher's logsumexp over the ids that are not ``member`` (B, V) of the support, at
    each temperature, in float64; -inf where the support holds the whole vocabulary."""
    z = dense.double().masked_fill(member[:, None, :], NEG)
    return torch.stack([torch.logsumexp(z / t, dim=-1) for t in temperatures], dim=-1).float()


def teacher_log_buckets(batch: SparseBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_t[U] (B, n, u), -inf on padding; log tail_t (B, n)) at ``temperature`` (one of the batch's grid), in
    float32: the logits over T against the full normaliser logaddexp(logsumexp(z[U] / T), c(T))."""
    g = _grid_index(batch, temperature)
    z = (batch.logits.float() / temperature).masked_fill(~batch.mask[:, None, :], NEG)
    c = batch.tails[..., g].float()
    norm = torch.logaddexp(torch.logsumexp(z, dim=-1), c)
    return z - norm[..., None], c - norm


@dataclass
class SparseTarget:
    """A subset's target on U plus one tail bucket per token: log-probabilities (B, u) (-inf on padding), the tail's
    log-mass (B,), and ``bound`` (B,), for "mean_logits" the tail bucket's log-mass taken from Hölder's bound (the
    true tail lies between 0 and it), -inf for the exact rules. "mean_losses" carries each teacher's buckets and
    the weights instead: ``per_teacher`` = (log p (B, s, u), log tail (B, s), w (s,))."""

    log_p: torch.Tensor | None
    log_tail: torch.Tensor | None
    bound: torch.Tensor
    per_teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def subset_target(batch: SparseBatch, subset: Sequence[int], rule: str = "mean_probs", temperature: float = 1.0,
                  weights: Sequence[float] | None = None) -> SparseTarget:
    """The target of teachers ``subset`` (positions in the pool) under ``rule`` (module docstring)."""
    if rule not in SPARSE_RULES:
        raise ValueError(f"unknown sparse rule {rule!r}; valid: {', '.join(SPARSE_RULES)}")
    chosen = torch.as_tensor(list(subset), dtype=torch.long, device=batch.logits.device)
    w = torch.full((len(chosen),), 1.0 / len(chosen)) if weights is None else \
        torch.as_tensor(list(weights), dtype=torch.float32) / float(sum(weights))
    w = w.to(batch.logits.device)
    none = torch.full((len(batch.ids),), NEG, device=batch.logits.device)
    if rule == "mean_logits":
        g = _grid_index(batch, temperature)
        zbar = (w[None, :, None] * batch.logits[:, chosen].float()).sum(1) / temperature
        zbar = zbar.masked_fill(~batch.mask, NEG)
        tail = (w[None, :] * batch.tails[:, chosen, g].float()).sum(1)  # Hölder: log of the tail's upper bound
        tail = torch.where(torch.isneginf(batch.tails[:, chosen, g]).any(1), none, tail)  # an empty complement
        norm = torch.logaddexp(torch.logsumexp(zbar, dim=-1), tail)
        return SparseTarget(zbar - norm[:, None], tail - norm, tail - norm)
    log_p, log_tail = teacher_log_buckets(batch, temperature)
    log_p, log_tail = log_p[:, chosen], log_tail[:, chosen]
    if rule == "mean_losses":
        return SparseTarget(None, None, none, (log_p, log_tail, w))
    log_w = torch.log(w)
    return SparseTarget(torch.logsumexp(log_w[None, :, None] + log_p, dim=1),
                        torch.logsumexp(log_w[None, :] + log_tail, dim=1), none)


def student_buckets(student_logits: torch.Tensor, batch: SparseBatch, temperature: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q[U] (B, u), -inf on padding; log q_tail (B,)) of a student's dense logits (B, V) at ``temperature``: the
    tail by logsumexp over the ids outside U (exact; -inf when U is the vocabulary)."""
    z = student_logits if student_logits.dtype == torch.float64 else student_logits.float()
    z = z / temperature
    log_q = z - torch.logsumexp(z, dim=-1, keepdim=True)
    member = batch.members(log_q.shape[-1])
    on_u = torch.gather(log_q, 1, batch.ids).masked_fill(~batch.mask, NEG)
    return on_u, torch.logsumexp(log_q.masked_fill(member, NEG), dim=-1)


DIVERGENCES = ("kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "ce")


def divergence(lp: torch.Tensor, lq: torch.Tensor, kind: str = "kl", beta: float = 0.5,
               alpha: float = 0.1) -> torch.Tensor:
    """Per row, the divergence of q from p given their log-probabilities over the same buckets (B, m): "kl"
    (forward, KL(p || q)), "reverse_kl" (KL(q || p)), "jsd" (generalised Jensen-Shannon with ``beta``, GKD:
    beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q), "skew_kl" (KL(p || alpha p + (1 - alpha)
    q)), "skew_rkl" (KL(q || (1 - alpha) p + alpha q), DistiLLM) or "ce" (soft cross-entropy): the sum over the
    buckets of ``losses.per_class``, the classification KD's terms. Buckets where the weighing distribution has no
    mass (padding, an empty tail) add nothing, no gradient either. Each divergence
    here is an f-divergence: on buckets that merge ids (the tail) it is exact for the bucketed distributions and
    a lower bound of the dense one (the data-processing inequality); "ce" is not a divergence and merges without
    bound."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; valid: {', '.join(DIVERGENCES)}")
    return per_class(lq, lp.to(lq.dtype), kind, beta, alpha).sum(-1)


def bucket_kd(student_logits: torch.Tensor, batch: SparseBatch, target: SparseTarget, temperature: float = 1.0,
              divergence_kind: str = "kl", reduce: bool = True, beta: float = 0.5, alpha: float = 0.1
              ) -> torch.Tensor:
    """The |U| + 1-bucket divergence (``divergence``, with its ``beta`` and ``alpha``) of the student (dense logits
    (B, V)) from the target, over each token's buckets, averaged over the tokens, times T^2; for "mean_losses" the
    teachers' own, weighed. ``reduce=False``: per token (B,)."""
    log_q, log_q_tail = student_buckets(student_logits, batch, temperature)
    lq = torch.cat([log_q, log_q_tail[:, None]], dim=-1)  # (B, u + 1)

    def one(log_p: torch.Tensor, log_tail: torch.Tensor) -> torch.Tensor:  # (B, u), (B,) -> (B,)
        return divergence(torch.cat([log_p, log_tail[:, None]], dim=-1), lq, divergence_kind, beta, alpha)

    if target.per_teacher is not None:
        lp, lt, w = target.per_teacher
        value = sum(w[i] * one(lp[:, i], lt[:, i]) for i in range(len(w)))
    else:
        value = one(target.log_p, target.log_tail)
    return (value.mean() if reduce else value) * temperature**2


def dense_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, rule: str = "mean_probs",
             temperature: float = 1.0, weights: Sequence[float] | None = None, divergence_kind: str = "kl",
             reduce: bool = True, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """The same loss on the whole vocabulary: the student's dense logits (B, V) against the chosen teachers' dense
    logits (B, s, V) combined by ``rule`` (teachers in the loop, ``--online``; and what ``bucket_kd`` equals when
    the support is the vocabulary)."""
    if rule not in SPARSE_RULES:
        raise ValueError(f"unknown sparse rule {rule!r}; valid: {', '.join(SPARSE_RULES)}")
    s = teacher_logits.shape[1]
    z = student_logits if student_logits.dtype == torch.float64 else student_logits.float()
    lq = torch.log_softmax(z / temperature, dim=-1)
    w = torch.full((s,), 1.0 / s, dtype=lq.dtype) if weights is None else \
        torch.as_tensor(list(weights), dtype=lq.dtype) / float(sum(weights))
    w = w.to(student_logits.device)
    t = teacher_logits.to(lq.dtype) / temperature
    if rule == "mean_logits":
        value = divergence(torch.log_softmax((w[None, :, None] * t).sum(1), -1), lq, divergence_kind, beta, alpha)
    elif rule == "mean_probs":
        lp = torch.logsumexp(torch.log(w)[None, :, None] + torch.log_softmax(t, -1), dim=1)
        value = divergence(lp, lq, divergence_kind, beta, alpha)
    else:
        lps = torch.log_softmax(t, -1)
        value = sum(w[i] * divergence(lps[:, i], lq, divergence_kind, beta, alpha) for i in range(s))
    return (value.mean() if reduce else value) * temperature**2


def _grid_index(batch: SparseBatch, temperature: float) -> int:
    for g, t in enumerate(batch.temperatures):
        if abs(t - temperature) <= 1e-9 * max(1.0, abs(t)):
            return g
    raise ValueError(f"temperature {temperature} is not in the cache's grid {list(batch.temperatures)}: its "
                     "complement log-sum-exp was computed at those alone")
