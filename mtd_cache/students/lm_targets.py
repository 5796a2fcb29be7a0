"""A token store as a KD data source for your own language-model loop (public API: ``KDTargets`` on a token store).

For a batch of the store's sequences, the chosen teachers' targets on every predicted position: each position's
union support (ids), the combined target on it and the tail bucket (``core.sparse``), and the KD loss of a
student's logits against them, as ``mtd-train`` computes it::

    targets = KDTargets("cache/fortunes/tokens.h5", teachers=[0, 2, 5], rule="mean_probs", temperature=1.0)
    batch = targets.batch([3, 17, 42])               # input_ids, attention_mask, labels (-100 on padding)
    logits = student(input_ids=batch["input_ids"]).logits
    loss = ce + targets.loss(logits, [3, 17, 42])    # KD^k of every predicted position of those sequences
    t = targets.targets([3, 17, 42])                 # .ids (P, u), .mask, .log_p (P, u), .log_tail (P,), .bound

Positions run sequence after sequence, token 1 to L - 1 (position i predicts token i + 1), as a right-padded
batch of those sequences flattens its real positions (``positions_of``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.sparse import DIVERGENCES, SPARSE_RULES, SparseBatch, bucket_kd, subset_target
from ..store.tokens import TokenStore
from ..tasks.lm_data import pad, predicted
from .selection import chosen_teachers


@dataclass
class SparseTargets:
    """The chosen teachers' targets on P positions: the union support ``ids`` (P, u) (``mask`` False on padding),
    the combined target's log-probabilities on it ``log_p`` (P, u) (-inf on padding) and its tail bucket's
    ``log_tail`` (P,); ``bound`` (P,): for "mean_logits" the tail bucket's log-mass from Hölder's bound (the true
    tail lies between 0 and it), -inf for the exact rules. "mean_losses" gives each teacher's own buckets instead
    (``log_p`` (P, s, u), ``log_tail`` (P, s)) and ``weights`` (s,)."""

    ids: torch.Tensor
    mask: torch.Tensor
    log_p: torch.Tensor
    log_tail: torch.Tensor
    bound: torch.Tensor
    weights: torch.Tensor | None = None


class TokenTargets:
    """``KDTargets`` on a token store (module docstring). ``rule``: "mean_probs", "mean_losses" or "mean_logits";
    ``divergence``: "kl", "reverse_kl", "jsd", "skew_kl" or "skew_rkl" (GKD's beta 0.5, DistiLLM's alpha 0.1);
    ``temperature``: one of the store's; ``weights``: one per teacher of ``teachers``, in that order (None:
    equal)."""

    def __init__(self, store: TokenStore | str | os.PathLike, teachers: Sequence[int], rule: str = "mean_probs",
                 weights: Sequence[float] | None = None, temperature: float = 1.0, divergence: str = "kl",
                 device: torch.device | str | None = None):
        self.store = store if isinstance(store, TokenStore) else TokenStore.open(store)
        self.teachers, self.weights = chosen_teachers(teachers, weights, self.store.num_teachers)
        if rule not in SPARSE_RULES:
            raise MtdError(f"unknown rule {rule!r}; valid on a token store: {', '.join(SPARSE_RULES)}")
        if divergence not in DIVERGENCES or divergence == "ce":
            valid = ", ".join(d for d in DIVERGENCES if d != "ce")
            raise MtdError(f"unknown divergence {divergence!r}; valid: {valid}")
        if float(temperature) not in self.store.temperatures:
            raise MtdError(f"temperature {temperature:g}: the store's tails were computed at "
                           f"{', '.join(f'{t:g}' for t in self.store.temperatures)} only")
        self.rule, self.divergence = rule, divergence
        self.temperature = float(temperature)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def positions(self, sequences: Iterable[int]) -> np.ndarray:
        """The store positions of those sequences' predicted tokens, in batch order."""
        seqs = [int(s) for s in sequences]
        bad = [s for s in seqs if not 0 <= s < self.store.num_examples]
        if bad:
            raise MtdError(f"sequence {bad[0]} is outside the store's 0..{self.store.num_examples - 1}")
        parts = self.store.positions_of(seqs)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def batch(self, sequences: Iterable[int]) -> dict[str, torch.Tensor]:
        """Those sequences' tokens, right-padded: ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding)."""
        ids, mask = pad([self.store.sequence(int(s)) for s in sequences])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.long().to(self.device),
                "labels": ids.masked_fill(~mask, -100).to(self.device)}

    def sparse(self, sequences: Iterable[int]) -> SparseBatch:
        return self.store.batch(self.positions(sequences)).to(self.device)

    def targets(self, sequences: Iterable[int]) -> SparseTargets:
        batch = self.sparse(sequences)
        t = subset_target(batch, self.teachers, self.rule, self.temperature, self.weights)
        if t.per_teacher is not None:
            lp, lt, w = t.per_teacher
            return SparseTargets(batch.ids, batch.mask, lp, lt, t.bound, w)
        return SparseTargets(batch.ids, batch.mask, t.log_p, t.log_tail, t.bound)

    def loss(self, student_logits: torch.Tensor, sequences: Iterable[int],
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """KD^k (times T^2) of a student's logits against the targets of ``sequences``: logits (B, L, V) of those
        sequences right-padded (``attention_mask`` (B, L); by default the sequences' own lengths), or (P, V) of
        their positions in order."""
        seqs = [int(s) for s in sequences]
        if student_logits.dim() == 3:
            if attention_mask is None:
                lengths = [len(self.store.sequence(s)) for s in seqs]
                attention_mask = torch.arange(student_logits.shape[1], device=student_logits.device)[None, :] < \
                    torch.as_tensor(lengths, device=student_logits.device)[:, None]
            student_logits = student_logits[:, :-1][predicted(attention_mask.bool())]
        batch = self.sparse(seqs)
        if len(student_logits) != len(batch.ids):
            raise MtdError(f"{len(student_logits)} student positions for the {len(batch.ids)} predicted positions of "
                           f"sequences {seqs[:5]}{'...' if len(seqs) > 5 else ''}")
        target = subset_target(batch, self.teachers, self.rule, self.temperature, self.weights)
        return bucket_kd(student_logits, batch, target, self.temperature, self.divergence)

    # ------------------------------------------------------------------ for a Trainer

    def dataset(self, sequences: Iterable[int] | None = None) -> list[dict[str, int]]:
        """The store's sequences (all, or those) as Trainer examples: ``{"index": i}``, collated by ``collate``."""
        return [{"index": int(i)} for i in (range(self.store.num_examples) if sequences is None else sequences)]

    def collate(self, features: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        """A Trainer's ``data_collator``: the sequences' ``batch`` and their ``index`` (the KD targets' key)."""
        index = [int(f["index"]) for f in features]
        return {**self.batch(index), "index": torch.as_tensor(index)}
