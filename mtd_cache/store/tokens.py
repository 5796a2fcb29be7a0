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
Attributes: ``format``, ``version``, ``vocab_size``, ``k``, ``teachers``, ``temperatures``, ``dense_check`` and
``meta`` (JSON), ``fingerprint``, the sha256 of the corpus' ``tokens`` and ``sequences``, and ``seal_sha256``
over every other attribute and every dataset's checksum (``seal_of``). Every dataset carries the sha256 of its
bytes (``integrity``); ``TokenStore.open`` verifies them all, the seal and the fingerprint, so a flipped byte or
a changed attribute is refused in one line. Writing and merging: ``store.token_writer``; the target math:
``core.sparse``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..core.errors import StoreError
from ..core.hashing import canonical_json, sha256_text
from ..core.sparse import SparseBatch
from .integrity import CHECKSUM, checksum_of, datasets

FORMAT, VERSION = "mtd-cache-tokens", 1
SEAL = "seal_sha256"
# dense-check figures that add over shards, overall and per temperature ("kl_gap_sum@T2"); the others: the worst
SUMMED = ("kl_gap_sum", "kl_dense_sum", "kl_count")
LOGITS_DTYPE = np.float16


def corpus_fingerprint(tokens: np.ndarray, sequences: np.ndarray) -> str:
    return sha256_text(checksum_of(np.asarray(tokens, np.int32)) + checksum_of(np.asarray(sequences, np.int64)))


def seal_of(attrs: dict[str, Any], sums: dict[str, str]) -> str:
    """sha256 over every attribute but the seal and every dataset's checksum: a changed attribute (k, the
    temperatures, the vocabulary) is refused as a changed byte is."""
    plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items() if k != SEAL}
    return sha256_text(canonical_json({"attrs": plain, "checksums": sums}))


class TokenStore:
    """A token store, opened read-only and verified: every dataset against its checksum, the corpus against the
    fingerprint. ``batch(positions)`` gives those positions' ``core.sparse.SparseBatch``."""

    def __init__(self, path: Path, f: h5py.File, arrays: dict[str, np.ndarray]):
        self.path, self._f = path, f
        a = f.attrs
        self.vocab_size, self.k, self.num_teachers = int(a["vocab_size"]), int(a["k"]), int(a["teachers"])
        self.temperatures = tuple(json.loads(a["temperatures"]))
        self.fingerprint = str(a["fingerprint"])
        self.meta = json.loads(a.get("meta", "{}"))
        self.tokens, self.sequences = arrays["tokens"], arrays["sequences"]
        self.offsets, self.ids = arrays["support/offsets"], arrays["support/ids"]
        self.logits, self.tails = arrays["support/logits"], arrays["tails"]
        self.gold, self.entropy = arrays["gold"], arrays["entropy"]
        self.predicted = np.maximum(np.diff(self.sequences) - 1, 0)  # positions per sequence: its tokens but the first
        self.dense_check = json.loads(a.get("dense_check", "null"))  # the dump's worst errors, if it checked
        self.seal = str(a[SEAL])

    # what a run reads of any store (``students.run``): the task, its metric, the teachers' hashes
    kind = "lm"
    metric = "perplexity"
    sealed = True  # opening verified the seal: a token store without one is refused
    imported = False
    max_length = None
    dev_labels = None

    @property
    def task(self) -> str:
        return str(self.meta.get("task", ""))

    @property
    def task_file(self) -> dict[str, Any] | None:
        return self.meta.get("task_file")

    @property
    def tokenizer(self) -> dict[str, str] | None:
        return self.meta.get("tokenizer")

    @property
    def teachers_sha256(self) -> list[str]:
        return [str(t.get("sha256")) for t in self.meta.get("teachers", [])]

    dev_logits = None
    teacher_forward_j = None

    @property
    def teacher_paths(self) -> list[str]:
        return [str(t.get("path")) for t in self.meta.get("teachers", [])]

    @property
    def dump_wall_s(self) -> float | None:
        return (self.meta.get("dump") or {}).get("wall_s")

    @property
    def dump_energy_j(self) -> float | None:
        return (self.meta.get("dump") or {}).get("energy_j")

    @property
    def teacher_forward_s(self) -> float | None:
        """Seconds of one teacher's forward over one sequence at the dump (its teacher calls alone, timed)."""
        forward = (self.meta.get("dump") or {}).get("forward_s")
        return None if forward is None else forward / max(self.num_examples * self.num_teachers, 1)

    @property
    def num_examples(self) -> int:
        """Sequences (a student's training examples)."""
        return len(self.sequences) - 1

    def positions_of(self, sequences: Iterable[int]) -> list[np.ndarray]:
        """Each sequence's positions (its tokens 1..L-1, in order) in the store."""
        first = np.concatenate([[0], np.cumsum(self.predicted)])
        return [np.arange(first[s], first[s] + self.predicted[s]) for s in sequences]

    def sequence(self, i: int) -> np.ndarray:
        return self.tokens[self.sequences[i]:self.sequences[i + 1]]

    @property
    def has_dense(self) -> bool:
        """Whether the dump kept the dense logits (``--dense-check``): ``dense(positions)`` gives them."""
        return "dense" in self._f

    def dense(self, positions: Iterable[int]) -> torch.Tensor:
        """(B, n, V) float32: the teachers' dense logits at those positions (a ``--dense-check`` store only)."""
        if not self.has_dense:
            raise StoreError(f"{self.path} holds no dense logits (dumped without --dense-check)")
        pos = np.asarray(list(positions), dtype=np.int64)
        order = np.argsort(pos)
        out = np.empty((len(pos), self.num_teachers, self.vocab_size), np.float32)
        out[order] = self._f["dense"][pos[order]] if len(np.unique(pos)) == len(pos) else \
            self._f["dense"][...][pos[order]]
        return torch.from_numpy(out)

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenStore:
        path = Path(path)
        if not path.is_file() or path.is_symlink():
            raise StoreError(f"no token store at {path}")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise StoreError(f"{path} is not an HDF5 file ({' '.join(str(exc).split())[:100]})") from None
        try:
            if f.attrs.get("format") != FORMAT or int(f.attrs.get("version", -1)) != VERSION or SEAL not in f.attrs:
                raise StoreError(f"{path} is not a token store of format {FORMAT} v{VERSION}")
            arrays, sums = {}, {}
            for name in datasets(f):  # each read once: hashed, then kept (the dense logits are read on demand)
                values, want = f[name][...], f[name].attrs.get(CHECKSUM)
                if want is None or checksum_of(values) != want:
                    raise StoreError(f"{path}: the dataset {name} does not match its checksum (changed since the "
                                     "dump)")
                sums[name] = str(want)
                if name != "dense":
                    arrays[name] = values
            if f.attrs.get(SEAL) != seal_of(dict(f.attrs), sums):
                raise StoreError(f"{path}: its attributes do not match its seal (changed since the dump)")
            store = cls(path, f, arrays)
            if corpus_fingerprint(store.tokens, store.sequences) != store.fingerprint:
                raise StoreError(f"{path}: its corpus does not match its fingerprint")
            if len(store.offsets) != int(store.predicted.sum()) + 1 or store.offsets[-1] != len(store.ids) or \
                    len(store.ids) != len(store.logits) or not (np.diff(store.offsets) > 0).all():
                raise StoreError(f"{path}: its support offsets do not fit its positions")
        except BaseException:
            f.close()
            raise
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



def token_summary(store: TokenStore) -> dict[str, Any]:
    """What ``mtd-cache inspect`` shows of a token store."""
    width = np.diff(store.offsets)
    mean = float(width.mean()) if len(width) else 0.0
    return {"path": str(store.path), "format": FORMAT, "version": VERSION, "size_bytes": store.path.stat().st_size,
            "task": store.meta.get("task"), "sequences": len(store.sequences) - 1, "tokens": int(len(store.tokens)),
            "positions": store.positions, "vocab_size": store.vocab_size, "k": store.k,
            "temperatures": list(store.temperatures), "num_teachers": store.num_teachers,
            "teachers": store.meta.get("teachers", []), "mean_support": mean, "support_over_k": mean / store.k,
            "max_support": int(width.max()) if len(width) else 0,
            "bytes_per_token_per_teacher": store.bytes_per_token(), "dense_check": store.dense_check,
            "dense_logits": store.has_dense, "dump": store.meta.get("dump"), "fingerprint": store.fingerprint,
            "seal_sha256": store.seal}


def format_token_summary(info: dict[str, Any]) -> str:
    lines = [f"store        {info['path']} ({info['size_bytes'] / 1e6:.1f} MB, {info['format']} v{info['version']})",
             f"task         {info['task']} (language modelling)",
             f"corpus       {info['sequences']} sequences, {info['tokens']} tokens, {info['positions']} predicted "
             f"positions; vocabulary {info['vocab_size']}",
             f"support      k = {info['k']}: |U| mean {info['mean_support']:.1f} = {info['support_over_k']:.2f} k "
             f"(max {info['max_support']}, at most {info['num_teachers']} k); "
             f"{info['bytes_per_token_per_teacher']:.0f} bytes per position and teacher",
             f"tails        complement log-sum-exp at T = {', '.join(f'{t:g}' for t in info['temperatures'])}",
             f"teachers     {info['num_teachers']}"]
    for i, t in enumerate(info["teachers"]):
        ppl = t.get("dev_perplexity")
        lines.append(f"  [{i}] seed {t.get('seed')}  dev perplexity {'n/a' if ppl is None else f'{ppl:.2f}'}  "
                     f"{t.get('path', '')}".rstrip())
    d = info.get("dump") or {}
    if d.get("wall_s"):
        energy = "unknown" if d.get("energy_j") is None else f"{d['energy_j']:.0f} J"
        lines.append(f"dump cost    {d['wall_s']:.1f} s in {d.get('shards')} shard(s), "
                     f"{d['positions_per_s']:.0f} positions/s, energy {energy}")
    c = info.get("dense_check")
    if c:
        gap = c["kl_gap_sum"] / max(c["kl_count"], 1)
        dense = c["kl_dense_sum"] / max(c["kl_count"], 1)
        lines.append(f"dense check  every subset: mean of probabilities max |error| {c['mean_probs']:.2e}; mean of "
                     f"logits' true tail beyond its bound by at most {c['mean_logits_outside_bound']:.2e}; the "
                     f"bucketed KL below the dense one by {gap:.4f} nats on average ({gap / max(dense, 1e-12):.1%} of "
                     f"the dense KL; at most {c['kl_gap_max']:.4f})")
        for t in info["temperatures"]:
            n = c.get(f"kl_count@T{t:g}")
            if n:
                g, d = c[f"kl_gap_sum@T{t:g}"] / n, c[f"kl_dense_sum@T{t:g}"] / n
                lines.append(f"  at T = {t:g}: dense KL {d:.4f} nats, the bucketed one {d - g:.4f} "
                             f"({(d - g) / max(d, 1e-12):.1%} of it)")
    lines += [f"fingerprint  {info['fingerprint']}", f"seal         {info['seal_sha256']} (every checksum verified)"]
    return "\n".join(lines)


def is_token_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a token store (its format attribute), without verifying it."""
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except OSError:
        return False


def open_store(path: str | os.PathLike, **kwargs: Any) -> Any:
    """A classification store (``TeacherStore``) or a token store, whichever ``path`` holds, verified."""
    if is_token_store(path):
        return TokenStore.open(path)
    from .reader import TeacherStore

    return TeacherStore.open(path, **kwargs)
