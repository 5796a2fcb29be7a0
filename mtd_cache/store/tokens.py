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
from ..core.hashing import canonical_json, sha256_text
from ..core.safe_files import atomic_path, check_target
from ..core.sparse import SparseBatch, bucket_kd, sparse_batch
from .integrity import CHECKSUM, checksum_of, datasets

FORMAT, VERSION = "mtd-cache-tokens", 1
SEAL = "seal_sha256"
# dense-check figures that add over shards, overall and per temperature ("kl_gap_sum@T2"); the others: the worst
SUMMED = ("kl_gap_sum", "kl_dense_sum", "kl_count")
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
    forward_s: float = 0.0  # the teachers' forwards alone

    @property
    def mean_width(self) -> float:
        return self.support / max(self.positions, 1)


def write_token_store(path: str | os.PathLike, sequences: Sequence[Sequence[int]],
                      teachers: Sequence[Callable[[torch.Tensor], torch.Tensor]], k: int,
                      temperatures: Sequence[float] = (1.0, 2.0), vocab_size: int | None = None,
                      meta: dict[str, Any] | None = None, dense_check: bool = False, batch_size: int = 1,
                      progress: Callable[[int], Any] | None = None) -> TokenDump:
    """Run every teacher on every sequence and write the token store atomically (``path`` replaced at the end).

    ``teachers[t](ids (B, L)) -> logits (B, L, V)``: a causal language model's raw logits, position i predicting
    token i + 1; ``batch_size`` sequences go through at once, right-padded (a causal model's real positions never
    see the padding after them). ``k``: each teacher's top-k per position (their union is the support).
    ``dense_check``: also keep the dense logits (dataset ``dense``, (P, n, V) float32) and check, position by
    position, that the sparse targets of every subset of the teachers match the dense ones (mean of
    probabilities within float32 of the stored values, mean of logits within its bound); the worst errors are
    returned in ``dense_check`` and recorded (small vocabularies and corpora: it is exhaustive). ``progress``:
    called with the sequences done after each batch."""
    import time

    path = Path(path)
    check_target(path, "token store")
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    arrays, worst = token_arrays(sequences, teachers, k, temperatures, vocab_size, dense_check, batch_size, progress,
                                 timing)
    attrs = {"format": FORMAT, "version": VERSION, "vocab_size": int(vocab_size or arrays.pop("_vocab")),
             "k": int(k), "teachers": len(teachers), "temperatures": json.dumps([float(t) for t in temperatures]),
             "fingerprint": corpus_fingerprint(arrays["tokens"], arrays["sequences"]),
             "dense_check": json.dumps(worst if dense_check else None),
             "meta": json.dumps(meta or {}, sort_keys=True)}
    arrays.pop("_vocab", None)
    write_arrays(path, arrays, attrs)
    width = np.diff(arrays["support/offsets"])
    return TokenDump(path, int(len(width)), int(width.sum()), int(sum(a.nbytes for a in arrays.values())),
                     time.perf_counter() - t0, worst if dense_check else {}, timing.get("forward_s", 0.0))


def token_arrays(sequences: Sequence[Sequence[int]], teachers: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                 k: int, temperatures: Sequence[float], vocab_size: int | None = None, dense_check: bool = False,
                 batch_size: int = 1, progress: Callable[[int], Any] | None = None,
                 timing: dict[str, float] | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The datasets of a token store of ``sequences`` (``write_token_store``), and the dense check's worst errors;
    ``timing["forward_s"]`` adds up the seconds spent in the teachers' forwards."""
    import time

    timing = {} if timing is None else timing
    n = len(teachers)
    starts = np.cumsum([0, *[len(s) for s in sequences]]).astype(np.int64)
    tokens = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]) if len(sequences) else \
        np.zeros(0, np.int32)
    names = ("ids", "logits", "tails", "gold", "entropy", "width", "dense")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    worst = {"mean_probs": 0.0, "mean_logits_outside_bound": 0.0, "kl_gap_max": 0.0, "kl_gap_sum": 0.0,
             "kl_dense_sum": 0.0, "kl_count": 0}
    vocab = vocab_size
    rows = [np.asarray(s, dtype=np.int64) for s in sequences]
    step = max(1, batch_size)
    for a in range(0, len(rows), step):
        live = [(a + i, r) for i, r in enumerate(rows[a:a + step]) if len(r) >= 2]
        if live:
            width = max(len(r) for _, r in live)
            ids = torch.zeros((len(live), width), dtype=torch.int64)
            for i, (_, r) in enumerate(live):
                ids[i, :len(r)] = torch.from_numpy(r)
            t0 = time.perf_counter()
            with torch.no_grad():
                outs = [teacher(ids).float().cpu() for teacher in teachers]  # n x (B, L, V)
            timing["forward_s"] = timing.get("forward_s", 0.0) + time.perf_counter() - t0
            vocab = vocab or outs[0].shape[-1]
            for t, o in enumerate(outs):
                if o.shape[-1] != vocab:
                    raise StoreError(f"teacher {t} gave {o.shape[-1]} logits per token, the store has {vocab}: "
                                     "teachers of one store share a tokenizer")
            for i, (seq, r) in enumerate(live):  # sequence by sequence: positions in store order
                dense = torch.stack([o[i, :len(r) - 1] for o in outs], dim=1)  # (L-1, n, V) float32
                bad = ~torch.isfinite(dense)
                if bad.any():
                    pos, t, _ = bad.nonzero()[0].tolist()
                    raise StoreError(f"teacher {t} gave a non-finite logit at token {pos} of sequence {seq}: refused")
                _one_sequence(dense, torch.from_numpy(r[1:]), k, temperatures, parts, worst, dense_check)
        if progress is not None:
            progress(len(rows[a:a + step]))
    width = np.concatenate(parts["width"]) if parts["width"] else np.zeros(0, np.int64)
    arrays = {
        "tokens": tokens, "sequences": starts,
        "support/offsets": np.concatenate([[0], np.cumsum(width)]).astype(np.int64),
        "support/ids": _cat(parts["ids"], (0,), np.int32),
        "support/logits": _cat(parts["logits"], (0, n), LOGITS_DTYPE),
        "tails": _cat(parts["tails"], (0, n, len(temperatures)), np.float32),
        "gold": _cat(parts["gold"], (0, n), np.float32),
        "entropy": _cat(parts["entropy"], (0, n), np.float32),
        "_vocab": np.int64(vocab or 0),
    }
    if dense_check:
        arrays["dense"] = _cat(parts["dense"], (0, n, int(vocab or 0)), np.float32)
    return arrays, worst


SLICE_VALUES = 1 << 24  # float64 values of dense logits handled at once (128 MiB)


def _one_sequence(dense: torch.Tensor, gold_ids: torch.Tensor, k: int, temperatures: Sequence[float],
                  parts: dict[str, list[np.ndarray]], worst: dict[str, float], dense_check: bool) -> None:
    """One sequence's positions (dense (P, n, V) float32) into ``parts``, in slices that bound the float64 work."""
    p, n, v = dense.shape
    step = max(1, SLICE_VALUES // max(n * v, 1))
    for a in range(0, p, step):
        d = dense[a:a + step].double()
        batch = sparse_batch(d, k, temperatures, dtype=torch.float16)
        log_p = torch.log_softmax(d, dim=-1)
        g = gold_ids[a:a + step]
        parts["ids"].append(batch.ids[batch.mask].numpy().astype(np.int32))
        parts["logits"].append(batch.logits.permute(0, 2, 1)[batch.mask].numpy().astype(LOGITS_DTYPE))
        parts["tails"].append(batch.tails.numpy())
        parts["gold"].append(log_p.gather(2, g[:, None, None].expand(-1, n, 1))[..., 0].float().numpy())
        parts["entropy"].append((-(log_p.exp() * log_p).sum(-1)).float().numpy())
        parts["width"].append(batch.width.numpy())
        if dense_check:
            parts["dense"].append(dense[a:a + step].numpy())
            _dense_check(d, batch, worst)


def write_arrays(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """The datasets, each with its checksum, and the attributes sealed (``seal_of``), into ``path`` atomically."""
    sums = {name: checksum_of(values) for name, values in arrays.items()}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, values in arrays.items():
                ds = f.create_dataset(name, data=values)
                ds.attrs[CHECKSUM] = sums[name]
            f.attrs.update(attrs)
            f.attrs[SEAL] = seal_of(attrs, sums)


def seal_of(attrs: dict[str, Any], sums: dict[str, str]) -> str:
    """sha256 over every attribute but the seal and every dataset's checksum: a changed attribute (k, the
    temperatures, the vocabulary) is refused as a changed byte is."""
    plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items() if k != SEAL}
    return sha256_text(canonical_json({"attrs": plain, "checksums": sums}))


def _cat(parts: list[np.ndarray], empty: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype)


def _dense_check(dense: torch.Tensor, batch: SparseBatch, worst: dict[str, float]) -> None:
    """Every subset's sparse targets against the dense ones of the stored (float16) values, at each temperature;
    and how far the bucketed KL falls below the dense one (each teacher in turn as the student, against the
    mean of the others' probabilities: the largest gap, and the sums of the gaps and of the dense KLs over
    ``kl_count`` of them, overall and per temperature, ``kl_gap_sum@T2``)."""
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
        if n < 2:
            continue
        for t in range(n):  # the bucketed KL's gap below the dense KL
            others = [u for u in range(n) if u != t]
            p = torch.softmax(stored[:, others] / temp, -1).mean(1)
            log_q = torch.log_softmax(stored[:, t] / temp, -1)
            dense_kl = (p * (p.clamp_min(1e-300).log() - log_q)).sum(-1)
            target = subset_target(batch, others, "mean_probs", temp)
            bucket = bucket_kd(stored[:, t], batch, target, temp, reduce=False) / temp**2
            gap = dense_kl - bucket.double()
            at = f"T{temp:g}"
            worst["kl_gap_max"] = max(worst["kl_gap_max"], float(gap.max()))
            for key, value in (("kl_gap_sum", float(gap.sum())), ("kl_dense_sum", float(dense_kl.sum())),
                               ("kl_count", len(gap))):
                worst[key] += value
                worst[f"{key}@{at}"] = worst.get(f"{key}@{at}", 0) + value


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
        if f.attrs.get("format") != FORMAT or int(f.attrs.get("version", -1)) != VERSION or SEAL not in f.attrs:
            f.close()
            raise StoreError(f"{path} is not a token store of format {FORMAT} v{VERSION}")
        sums = {}
        for name in datasets(f):
            want = f[name].attrs.get(CHECKSUM)
            if want is None or checksum_of(f[name][...]) != want:
                f.close()
                raise StoreError(f"{path}: the dataset {name} does not match its checksum (changed since the dump)")
            sums[name] = str(want)
        if f.attrs.get(SEAL) != seal_of(dict(f.attrs), sums):
            f.close()
            raise StoreError(f"{path}: its attributes do not match its seal (changed since the dump)")
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



def merge_token_stores(shards: Sequence[str | os.PathLike], path: str | os.PathLike,
                       meta: dict[str, Any] | None = None) -> TokenDump:
    """One token store from shards of one dump (consecutive sequence ranges, same teachers, k, temperatures and
    vocabulary), each verified as it is opened: the same datasets as one dump of all their sequences, bit for bit
    (the support of a position depends on that position's logits alone). Written atomically to ``path``."""
    import time

    t0 = time.perf_counter()
    path = Path(path)
    check_target(path, "token store")
    stores = [TokenStore.open(p) for p in shards]
    try:
        if not stores:
            raise StoreError("no shards to merge")
        first = stores[0]
        for s in stores[1:]:
            mine = (s.vocab_size, s.k, s.num_teachers, s.temperatures, s.has_dense)
            theirs = (first.vocab_size, first.k, first.num_teachers, first.temperatures, first.has_dense)
            if mine != theirs:
                raise StoreError(f"{s.path} is a shard of another dump (vocabulary, k, teachers, temperatures, dense: "
                                 f"{mine}, not {theirs})")
        arrays = {
            "tokens": np.concatenate([s.tokens for s in stores]).astype(np.int32),
            "sequences": _stack_offsets([s.sequences for s in stores]),
            "support/offsets": _stack_offsets([s.offsets for s in stores]),
            "support/ids": np.concatenate([s.ids for s in stores]).astype(np.int32),
            "support/logits": np.concatenate([s.logits for s in stores]),
            "tails": np.concatenate([s.tails for s in stores]),
            "gold": np.concatenate([s.gold for s in stores]),
            "entropy": np.concatenate([s.entropy for s in stores]),
        }
        if first.has_dense:
            arrays["dense"] = np.concatenate([s._f["dense"][...] for s in stores])
        checks = [s.dense_check for s in stores if s.dense_check]
        worst = {key: (sum if key.split("@")[0] in SUMMED else max)(c.get(key, 0) for c in checks)
                 for key in checks[0]} if checks else None
        attrs = {"format": FORMAT, "version": VERSION, "vocab_size": first.vocab_size, "k": first.k,
                 "teachers": first.num_teachers, "temperatures": json.dumps(list(first.temperatures)),
                 "fingerprint": corpus_fingerprint(arrays["tokens"], arrays["sequences"]),
                 "dense_check": json.dumps(worst), "meta": json.dumps(meta or {}, sort_keys=True)}
    finally:
        for s in stores:
            s.close()
    write_arrays(path, arrays, attrs)
    width = np.diff(arrays["support/offsets"])
    return TokenDump(path, int(len(width)), int(width.sum()), int(sum(a.nbytes for a in arrays.values())),
                     time.perf_counter() - t0, worst or {})


def _stack_offsets(parts: list[np.ndarray]) -> np.ndarray:
    """Offsets arrays (each from 0 to its total) of consecutive parts as one."""
    out, base = [np.zeros(1, np.int64)], 0
    for p in parts:
        out.append(p[1:].astype(np.int64) + base)
        base += int(p[-1])
    return np.concatenate(out)


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
