"""Writing token stores (format: ``store.tokens``): run the teachers over the sequences, keep each position's
union support, the teachers' logits on it and their complement log-sum-exps (``core.sparse``), check every
subset against the dense logits on request, and merge the shards of one dump into the store one job would
write. Written atomically, every dataset with its checksum, the attributes sealed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..core.errors import StoreError
from ..core.safe_files import atomic_path, check_target
from ..core.sparse import SparseBatch, bucket_kd, sparse_batch
from .integrity import CHECKSUM, checksum_of
from .tokens import FORMAT, LOGITS_DTYPE, SEAL, SUMMED, VERSION, TokenStore, corpus_fingerprint, seal_of


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
