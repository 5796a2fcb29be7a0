"""A token store: several language-model teachers' outputs on a corpus, sparse per token, serving any subset exactly.

One HDF5 file (format ``mtd-cache-tokens``, version 1; ``docs/FORMAT.md``) holds, for a corpus of S sequences
and n teachers sharing a tokenizer, per predicted position p (every token of a sequence but the first is
predicted from those before it):

=====================  =====================  ===========================================================
dataset                shape, dtype           what
=====================  =====================  ===========================================================
``tokens``             (T,) int32             the corpus' token ids, sequence after sequence
``sequences``          (S + 1,) int64         where each sequence starts in ``tokens`` (and the end)
``support/offsets``    (P + 1,) int64         where each position's support starts in ``support/ids``
``support/ids``        (sum |U|,) int32       the pool-union support U of each position, ascending
``support/logits``     (sum |U|, n) float16   every teacher's raw logit on every id of U
``tails``              (P, n, G) float32      logsumexp over V \\ U of each teacher's logits / T_g
``gold``               (P, n) float32         each teacher's log-probability (T = 1) of the token that came
``entropy``            (P, n) float32         each teacher's entropy (T = 1) at the position
=====================  =====================  ===========================================================

Positions run in ``tokens`` order: sequence s's positions are its tokens 1..len-1, the position of token i the
i-th prediction overall (``position_of``). A -inf tail is an empty complement (U holds the whole vocabulary).
Attributes: ``format``, ``version``, ``vocab_size``, ``k``, ``temperatures`` and ``teachers`` (JSON), and
``fingerprint``, the sha256 of the corpus' ``tokens`` and ``sequences``. Every dataset carries the sha256 of its
bytes (``integrity``); ``TokenStore.open`` verifies them all and the fingerprint, so a flipped byte is refused
in one line naming the dataset. The target math is ``core.sparse``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..core.errors import StoreError
from ..core.hashing import sha256_text
from ..core.safe_files import atomic_path, check_target
from ..core.sparse import SparseBatch, sparse_batch
from .integrity import CHECKSUM, checksum_of, datasets

FORMAT, VERSION = "mtd-cache-tokens", 1
LOGITS_DTYPE = np.float16


def corpus_fingerprint(tokens: np.ndarray, sequences: np.ndarray) -> str:
    return sha256_text(checksum_of(np.asarray(tokens, np.int32)) + checksum_of(np.asarray(sequences, np.int64)))


@dataclass
class TokenDump:
    """What a dump writes, and what it measured (``write_token_store``)."""

    path: Path
    positions: int
    support: int  # sum over positions of |U|
    bytes: int  # the datasets' bytes
    wall_s: float
    dense_check: dict[str, float] = field(default_factory=dict)

    @property
    def mean_width(self) -> float:
        return self.support / max(self.positions, 1)


def write_token_store(path: str | os.PathLike, sequences: Sequence[Sequence[int]],
                      teachers: Sequence[Callable[[torch.Tensor], torch.Tensor]], k: int,
                      temperatures: Sequence[float] = (1.0, 2.0), vocab_size: int | None = None,
                      meta: dict[str, Any] | None = None, dense_check: bool = False) -> TokenDump:
    """Run every teacher on every sequence and write the token store atomically (``path`` replaced at the end).

    ``teachers[t](ids (1, L)) -> logits (1, L, V)``: a causal language model's raw logits; position i predicts
    token i + 1. ``k``: each teacher's top-k per position (their union is the support). ``dense_check``: also check,
    position by position, that the sparse targets of every subset of the teachers match the dense ones (mean of
    probabilities within float32 of the stored values, mean of logits within its bound); the worst errors are
    returned in ``dense_check`` (small vocabularies and corpora: it is exhaustive)."""
    import time

    path = Path(path)
    check_target(path, "token store")
    t0 = time.perf_counter()
    n = len(teachers)
    starts = np.cumsum([0, *[len(s) for s in sequences]]).astype(np.int64)
    tokens = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]) if sequences else \
        np.zeros(0, np.int32)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("ids", "logits", "tails", "gold", "entropy", "width")}
    worst = {"mean_probs": 0.0, "mean_logits_outside_bound": 0.0}
    vocab = vocab_size
    for seq in sequences:
        if len(seq) < 2:
            continue
        ids = torch.as_tensor(np.asarray(seq, dtype=np.int64))[None]
        with torch.no_grad():
            dense = torch.stack([teacher(ids)[0, :-1].double() for teacher in teachers], dim=1)  # (L-1, n, V)
        vocab = vocab or dense.shape[-1]
        if dense.shape[-1] != vocab:
            raise StoreError(f"a teacher gave {dense.shape[-1]} logits per token, another {vocab}: teachers of one "
                             "store share a tokenizer")
        batch = sparse_batch(dense, k, temperatures, dtype=torch.float16)
        gold_ids = ids[0, 1:]
        log_p = torch.log_softmax(dense, dim=-1)
        parts["ids"].append(batch.ids[batch.mask].numpy().astype(np.int32))
        parts["logits"].append(batch.logits.permute(0, 2, 1)[batch.mask].numpy().astype(LOGITS_DTYPE))
        parts["tails"].append(batch.tails.numpy())
        parts["gold"].append(log_p.gather(2, gold_ids[:, None, None].expand(-1, n, 1))[..., 0].float().numpy())
        parts["entropy"].append((-(log_p.exp() * log_p).sum(-1)).float().numpy())
        parts["width"].append(batch.width.numpy())
        if dense_check:
            _dense_check(dense, batch, worst)
    width = np.concatenate(parts["width"]) if parts["width"] else np.zeros(0, np.int64)
    arrays = {
        "tokens": tokens, "sequences": starts,
        "support/offsets": np.concatenate([[0], np.cumsum(width)]).astype(np.int64),
        "support/ids": _cat(parts["ids"], (0,), np.int32),
        "support/logits": _cat(parts["logits"], (0, n), LOGITS_DTYPE),
        "tails": _cat(parts["tails"], (0, n, len(temperatures)), np.float32),
        "gold": _cat(parts["gold"], (0, n), np.float32),
        "entropy": _cat(parts["entropy"], (0, n), np.float32),
    }
    attrs = {"format": FORMAT, "version": VERSION, "vocab_size": int(vocab or 0), "k": int(k), "teachers": n,
             "temperatures": json.dumps([float(t) for t in temperatures]),
             "fingerprint": corpus_fingerprint(tokens, starts), "meta": json.dumps(meta or {}, sort_keys=True)}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, values in arrays.items():
                ds = f.create_dataset(name, data=values)
                ds.attrs[CHECKSUM] = checksum_of(values)
            f.attrs.update(attrs)
    return TokenDump(path, int(len(width)), int(width.sum()), int(sum(a.nbytes for a in arrays.values())),
                     time.perf_counter() - t0, worst if dense_check else {})


def _cat(parts: list[np.ndarray], empty: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype)


def _dense_check(dense: torch.Tensor, batch: SparseBatch, worst: dict[str, float]) -> None:
    """Every subset's sparse targets against the dense ones of the stored (float16) values, at each temperature."""
    from itertools import combinations

    from ..core.sparse import subset_target

    stored = dense.clone()
    b, n, _ = dense.shape
    rows = torch.arange(b)[:, None].expand_as(batch.ids)
    for t in range(n):  # the dense logits as the store holds them on U
        stored[rows[batch.mask], t, batch.ids[batch.mask]] = batch.logits[:, t][batch.mask].double()
    member = batch.members(dense.shape[-1])
    for temp in batch.temperatures:
        for size in range(1, n + 1):
            for subset in combinations(range(n), size):
                p = torch.softmax(stored[:, list(subset)] / temp, -1).mean(1)
                got = subset_target(batch, subset, "mean_probs", temp)
                on_u = torch.gather(p, 1, batch.ids)
                err = ((got.log_p.exp().double() - on_u).abs() * batch.mask).max()
                worst["mean_probs"] = max(worst["mean_probs"], float(err))
                ml = subset_target(batch, subset, "mean_logits", temp)
                dense_ml = torch.softmax(stored[:, list(subset)].mean(1) / temp, -1)
                tail = dense_ml.masked_fill(member, 0).sum(-1)
                over = (tail - ml.bound.exp().double()).clamp(min=0).max()  # a true tail beyond the bound: rounding
                worst["mean_logits_outside_bound"] = max(worst["mean_logits_outside_bound"], float(over))


class TokenStore:
    """A token store, opened read-only and verified: every dataset against its checksum, the corpus against the
    fingerprint. ``batch(positions)`` gives those positions' ``core.sparse.SparseBatch``."""

    def __init__(self, path: Path, f: h5py.File):
        self.path, self._f = path, f
        a = f.attrs
        self.vocab_size, self.k, self.num_teachers = int(a["vocab_size"]), int(a["k"]), int(a["teachers"])
        self.temperatures = tuple(json.loads(a["temperatures"]))
        self.fingerprint = str(a["fingerprint"])
        self.meta = json.loads(a.get("meta", "{}"))
        self.tokens, self.sequences = f["tokens"][...], f["sequences"][...]
        self.offsets, self.ids = f["support/offsets"][...], f["support/ids"][...]
        self.logits, self.tails = f["support/logits"][...], f["tails"][...]
        self.gold, self.entropy = f["gold"][...], f["entropy"][...]
        self.predicted = np.maximum(np.diff(self.sequences) - 1, 0)  # positions per sequence: its tokens but the first

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenStore:
        path = Path(path)
        if not path.is_file() or path.is_symlink():
            raise StoreError(f"no token store at {path}")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise StoreError(f"{path} is not an HDF5 file ({' '.join(str(exc).split())[:100]})") from None
        if f.attrs.get("format") != FORMAT or int(f.attrs.get("version", -1)) != VERSION:
            f.close()
            raise StoreError(f"{path} is not a token store of format {FORMAT} v{VERSION}")
        for name in datasets(f):
            want = f[name].attrs.get(CHECKSUM)
            if want is None or checksum_of(f[name][...]) != want:
                f.close()
                raise StoreError(f"{path}: the dataset {name} does not match its checksum (changed since the dump)")
        store = cls(path, f)
        if corpus_fingerprint(store.tokens, store.sequences) != store.fingerprint:
            f.close()
            raise StoreError(f"{path}: its corpus does not match its fingerprint")
        if len(store.offsets) != int(store.predicted.sum()) + 1 or store.offsets[-1] != len(store.ids) or \
                len(store.ids) != len(store.logits) or not (np.diff(store.offsets) > 0).all():
            f.close()
            raise StoreError(f"{path}: its support offsets do not fit its positions")
        return store

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def positions(self) -> int:
        return len(self.offsets) - 1

    def position_of(self, sequence: int, token: int) -> int:
        """The position that predicts token ``token`` (>= 1) of sequence ``sequence``."""
        return int(self.predicted[:sequence].sum()) + token - 1

    def batch(self, positions: Iterable[int]) -> SparseBatch:
        """Those positions' supports, logits and tails, padded to the widest (``core.sparse.SparseBatch``)."""
        pos = np.asarray(list(positions), dtype=np.int64)
        start, stop = self.offsets[pos], self.offsets[pos + 1]
        width = stop - start
        u = int(width.max()) if len(pos) else 0
        grid = start[:, None] + np.arange(u)[None, :]
        mask = np.arange(u)[None, :] < width[:, None]
        rows = np.where(mask, grid, 0)
        ids = np.where(mask, self.ids[rows], 0).astype(np.int64)
        logits = np.transpose(self.logits[rows], (0, 2, 1))  # (B, n, u)
        return SparseBatch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(logits.copy()),
                           torch.from_numpy(self.tails[pos]), self.temperatures)

    def bytes_per_token(self) -> float:
        """The target data's bytes per predicted position per teacher (support ids, logits, tails, gold, entropy)."""
        total = sum(self._f[n].id.get_storage_size() for n in ("support/ids", "support/logits", "tails", "gold",
                                                                   "entropy"))
        return total / max(self.positions, 1) / max(self.num_teachers, 1)

