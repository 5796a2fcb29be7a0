"""Batches of language-model sequences, and their scores: what LM teachers, the token dump and LM students share.

Sequences of a batch are right-padded to the batch's longest with id 0 (a causal model's valid positions never
attend to a later one, so padding after them changes nothing they compute); ``mask`` marks the real tokens.
``score`` gives, per sequence, the next-token NLL summed over its predicted positions, their count and how many
the model's argmax got right: perplexity is exp(sum NLL / sum tokens) over any set of sequences (a ratio of sums,
resampled by sequence, never a mean of per-sequence perplexities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.fit import Accumulated
from ..core.runtime import epoch_generator
from .lm import Sequences


def pad(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L) int64, mask (B, L) bool) of sequences right-padded with 0 to the longest."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def epoch_batches(n: int, batch_size: int, grad_accum: int, seed: int, epoch: int) -> list[Accumulated]:
    """One epoch's optimizer steps over ``n`` sequences: ``grad_accum`` micro-batches of ``batch_size`` sequence
    indices each, in an order drawn from (seed, epoch) alone (a resumed run draws the same)."""
    order = torch.randperm(n, generator=epoch_generator(seed, epoch)).numpy()
    micro = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [Accumulated(tuple(micro[i:i + grad_accum])) for i in range(0, len(micro), grad_accum)]


def predicted(mask: torch.Tensor) -> torch.Tensor:
    """(B, L - 1) bool of right-padded sequences' ``mask`` (B, L): the positions that predict a real token from a
    real one (position i predicts token i + 1)."""
    return mask[:, 1:] & mask[:, :-1]


def next_token_pairs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (P, V), gold ids (P,)) of every predicted position of a right-padded batch, sequence after
    sequence: the order of a token store's positions of those sequences."""
    valid = predicted(mask)
    return logits[:, :-1][valid], ids[:, 1:][valid]


@dataclass
class Scores:
    """Per sequence: NLL summed over its predicted positions, their count, the argmax's correct predictions."""

    nll: np.ndarray  # (S,) float64
    tokens: np.ndarray  # (S,) int64
    correct: np.ndarray  # (S,) int64

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.sum() / max(int(self.tokens.sum()), 1)))

    @property
    def accuracy(self) -> float:
        return float(self.correct.sum() / max(int(self.tokens.sum()), 1))

    def metrics(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "nll": float(self.nll.sum() / max(int(self.tokens.sum()), 1)),
                "accuracy": self.accuracy}


def token_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """(NLL (B, L-1), valid (B, L-1), correct (B, L-1)) of next-token prediction: position i predicts token i + 1,
    valid where both are real tokens."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    gold = ids[:, 1:]
    nll = -logp.gather(-1, gold[..., None])[..., 0]
    valid = predicted(mask)
    correct = (logp.argmax(-1) == gold) & valid
    return nll * valid, valid, correct


@torch.no_grad()
def score(model: torch.nn.Module, seqs: Sequences, batch_size: int, device: torch.device,
          dtype: torch.dtype | None = None) -> Scores:
    """``model``'s next-token scores on every sequence (in length-sorted batches)."""
    model.eval()
    n = len(seqs)
    nll, tokens, correct = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64)
    order = np.argsort(-seqs.lengths, kind="stable")
    for a in range(0, n, batch_size):
        idx = order[a:a + batch_size]
        ids, mask = pad([seqs[i] for i in idx])
        ids, mask = ids.to(device), mask.to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(input_ids=ids).logits
        loss, valid, right = token_nll(logits, ids, mask)
        nll[idx] = loss.double().sum(1).cpu().numpy()
        tokens[idx] = valid.sum(1).cpu().numpy()
        correct[idx] = right.sum(1).cpu().numpy()
    return Scores(nll, tokens, correct)
