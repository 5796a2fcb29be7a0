"""The dump of language-model teachers: a token store (``store.tokens``) of the task's training sequences.

The union support of a position needs every teacher's top-k there, so the dump splits the *sequences*, never
the teachers: shard i of n is a contiguous range of sequences run through all n teachers (each loaded once per
shard job), written as a complete token store of its own into ``OUT.partial/shard-IIIII-of-NNNNN.h5``. The shards
are independent jobs (``--shard i/n``: a Slurm array, Ray tasks, a loop over machines); a dump without
``--shard`` computes the shards still missing and merges them (``merge_token_stores``: the same bytes as one
dump) into ``OUT``, so an interrupted dump resumes at its last finished shard. A shard is reused only when it
was dumped by the same teachers, data and settings (its ``key``); a store already at ``OUT`` with this key is
up to date.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.energy import EnergyMeter
from ..core.errors import MtdError, StoreError
from ..core.hashing import canonical_json, sha256_text
from ..core.progress import Progress, human_bytes
from ..core.runtime import PRECISIONS, autocast_dtype, resolve_device
from ..core.safe_files import atomic_write_json, check_target, make_dirs, read_text
from ..core.settings import Settings, setting
from ..models import causal_lm
from ..models.bert import tokenizer_identity
from ..store.format import partial_dir
from ..store.token_writer import merge_token_stores, write_token_store
from ..store.tokens import TokenStore
from .adapter import task_file_extra
from .folders import Teacher
from .lm import task_data

log = logging.getLogger(__name__)

SHARD = re.compile(r"shard-(\d{5})-of-(\d{5})\.h5")


@dataclass(frozen=True)
class LmDumpSettings(Settings):
    WHAT = "dump"
    k: int = setting(32, "each teacher's top-k ids per position; the support is their union (DistillKit keeps a "
                         "single teacher's top-k, e.g. 32-128)", low=1)
    temperatures: list[float] = setting([1.0, 2.0], "the grid of each teacher's complement log-sum-exp: students "
                                                    "distil at these temperatures only")
    dense_check: bool = setting(False, "also keep the dense logits and check every subset's sparse targets against "
                                       "them (small vocabularies and corpora)")
    batch_size: int = setting(8, "sequences per inference batch", low=1, keep=False)
    chunk: int = setting(256, "sequences per shard: what an interrupted dump may lose", low=1, keep=False)
    data_dir: str | None = setting(None, "None: the teachers' data_dir, else the task file's folder")
    train_subset: int | None = setting(None, "cache only the first N training sequences", low=1)
    precision: str = setting("auto", "inference: bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    size_budget_gb: float = setting(50.0, "refuse a store estimated larger than this (GB = 1e9 bytes)", above=0,
                                    keep=False)

    def check(self) -> None:
        if not self.temperatures or any(not t > 0 for t in self.temperatures):
            raise MtdError(f"temperatures {self.temperatures}: expected one or more temperatures above 0")


@dataclass
class TokenPlan:
    """What a token dump writes: the sequences, the teachers' shared tokenizer, the key shards are reused by."""

    settings: LmDumpSettings
    sequences: list[np.ndarray]
    meta: dict[str, Any]
    key: str
    vocab: int
    device: torch.device
    dtype: torch.dtype | None
    teachers: list[Teacher] = field(default_factory=list)


def plan(task: Any, teachers: list[Teacher], options: dict[str, Any], device: str | None) -> TokenPlan:
    s = LmDumpSettings.resolve(options).settings
    toks = [causal_lm.load_tokenizer(str(t.path)) for t in teachers]
    ident = tokenizer_identity(toks[0])
    for t, tok in zip(teachers[1:], toks[1:], strict=True):
        if tokenizer_identity(tok)["sha256"] != ident["sha256"]:
            raise MtdError(f"teachers of one token store share a tokenizer: {t.path}'s differs from "
                           f"{teachers[0].path}'s")
    vocabs = {int(t.info.get("vocab_size") or 0) for t in teachers}
    if len(vocabs) != 1:
        raise MtdError(f"teachers of one token store share a vocabulary; these have {sorted(vocabs)} output logits")
    data_dir = s.data_dir or teachers[0].info.get("data_dir")
    train, dev = task_data(task, toks[0], data_dir, s.train_subset)
    dev_dtype = resolve_device(device)
    dtype, precision = autocast_dtype(s.precision, dev_dtype)
    fingerprint = task.fingerprint(ident, train, dev)
    results = {k: v for k, v in s.as_dict().items() if k not in ("batch_size", "chunk", "size_budget_gb", "data_dir")}
    key = sha256_text(canonical_json({"data": fingerprint, "teachers": [t.sha256 for t in teachers],
                                      "settings": results, "precision": precision}))
    meta = {"task": task.name, "key": key, "data_fingerprint": fingerprint, "tokenizer": ident,
            "block_size": task.block_size, "packing": task.packing, "settings": s.as_dict(), "precision": precision,
            "teachers": [{"seed": t.seed, "path": str(t.path.resolve()), "sha256": t.sha256,
                          "model": t.info.get("model"), "dev_perplexity": t.info.get("metric")} for t in teachers],
            "dev_sequences": len(dev), "dev_sha256": dev.sha256(),
            "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
            **task_file_extra(task)}
    return TokenPlan(s, [train[i] for i in range(len(train))], meta, key, vocabs.pop(), dev_dtype, dtype,
                     list(teachers))


def run(task: Any, teachers: list[Teacher], out: Path, options: dict[str, Any], device: str | None = None,
        force: bool = False, shard: tuple[int, int] | None = None) -> Path:
    """Dump (a shard of) the token store ``out`` (module docstring); returns the store, or the shard written."""
    p = plan(task, teachers, options, device)
    if shard is None and out.exists():
        try:
            with TokenStore.open(out) as have:
                theirs, their_meta = have.meta.get("key"), have.meta
        except StoreError as exc:
            if not force:
                raise
            log.warning("%s: dumping again (--force)", exc)
            theirs = None
        if theirs == p.key:
            log.info("%s holds this dump already (same teachers, data and settings): nothing to do", out)
            return out
        if theirs is not None and not force:
            raise MtdError(f"{out} was dumped otherwise ({_difference(their_meta, p.meta)}): give another --out, or "
                           "--force to dump again")
    pdir = partial_dir(out)
    n = _shard_count(pdir, p, shard)
    bounds = np.linspace(0, len(p.sequences), n + 1).round().astype(int)
    todo = [i for i in ([shard[0]] if shard is not None else range(n)) if not _done(_shard_path(pdir, i, n), p.key)]
    if shard is not None and not todo:
        log.info("shard %d/%d: dumped already with these teachers, data and settings", *shard)
    size = _estimate_bytes(p)
    if size > p.settings.size_budget_gb * 1e9:
        raise MtdError(f"the token store would take about {human_bytes(size)}, over the {p.settings.size_budget_gb:g} "
                       "GB budget: raise it with --set size_budget_gb=N, or cache fewer sequences (--train-subset)")
    if todo:
        make_dirs(pdir, below=out.parent)
        _dump_shards(p, pdir, n, bounds, todo)
    if shard is not None:
        return _shard_path(pdir, shard[0], n)
    shards = [_shard_path(pdir, i, n) for i in range(n)]
    meta = {**p.meta, "dump": _cost(shards)}
    dump = merge_token_stores(shards, out, meta)
    shutil.rmtree(pdir)
    log.info("token store %s: %d positions, |U| %.1f = %.2f k, %s", out, dump.positions, dump.mean_width,
             dump.mean_width / p.settings.k, human_bytes(dump.bytes))
    return out


def _difference(theirs: dict[str, Any], mine: dict[str, Any]) -> str:
    """The first thing that differs between a store's dump and this one, with both values."""
    a, b = theirs.get("settings", {}), mine["settings"]
    for key in sorted(set(a) | set(b)):
        if key not in ("batch_size", "chunk", "size_budget_gb", "data_dir") and a.get(key) != b.get(key):
            return f"{key} {a.get(key)!r} there, {b.get(key)!r} asked"
    if [t.get("sha256") for t in theirs.get("teachers", [])] != [t["sha256"] for t in mine["teachers"]]:
        return "other teachers"
    if theirs.get("data_fingerprint") != mine["data_fingerprint"]:
        return "other data or tokenizer"
    return f"precision {theirs.get('precision')!r} there, {mine['precision']!r} asked"


def _dump_shards(p: TokenPlan, pdir: Path, n: int, bounds: np.ndarray, todo: list[int]) -> None:
    models = [causal_lm.load(str(t.path)).to(p.device) for t in p.teachers]
    for t, m in zip(p.teachers, models, strict=True):
        if causal_lm.vocab_size(m) != p.vocab:
            raise MtdError(f"{t.path}: {causal_lm.vocab_size(m)} output logits, its record says {p.vocab}")

    def run_one(m: torch.nn.Module):
        def call(ids: torch.Tensor) -> torch.Tensor:
            with torch.autocast(p.device.type, dtype=p.dtype or torch.float32, enabled=p.dtype is not None):
                return m(input_ids=ids.to(p.device)).logits.float()
        return call

    fns = [run_one(m) for m in models]
    total = sum(int(bounds[i + 1] - bounds[i]) for i in todo)
    with Progress(total, f"dump {len(models)} teachers", unit="seq") as bar:
        for i in todo:
            a, b = int(bounds[i]), int(bounds[i + 1])
            path = _shard_path(pdir, i, n)
            check_target(path, "shard")
            with EnergyMeter() as meter:
                dump = write_token_store(path.with_name(path.name + ".writing"), p.sequences[a:b], fns,
                                         k=p.settings.k, temperatures=p.settings.temperatures, vocab_size=p.vocab,
                                         meta={**p.meta, "shard": [i, n, a, b]}, dense_check=p.settings.dense_check,
                                         batch_size=p.settings.batch_size, progress=bar.update)
            _stamp_cost(dump.path, meter.reading.wall_s, meter.reading.energy_j, dump.positions, dump.forward_s)
            dump.path.replace(path)
            log.info("shard %d/%d: sequences %d-%d, %d positions, %.0f positions/s", i, n, a, b, dump.positions,
                     dump.positions / max(meter.reading.wall_s, 1e-9))


def _stamp_cost(path: Path, wall_s: float, energy_j: float | None, positions: int, forward_s: float) -> None:
    """A shard's cost beside it (``NAME.cost.json``), kept out of its sealed attributes."""
    cost = {"wall_s": wall_s, "energy_j": energy_j, "positions": positions, "forward_s": forward_s}
    atomic_write_json(path.with_name(path.name.removesuffix(".writing") + ".cost.json"), cost)


def _cost(shards: list[Path]) -> dict[str, Any]:
    parts = []
    for s in shards:
        try:
            parts.append(json.loads(read_text(s.with_name(s.name + ".cost.json"))))
        except (OSError, ValueError):
            parts.append({"wall_s": None, "energy_j": None, "positions": None})
    known = [c for c in parts if c.get("wall_s") is not None]
    wall = sum(c["wall_s"] for c in known) if len(known) == len(parts) else None
    energy = sum(c["energy_j"] for c in known) if known and all(c.get("energy_j") is not None for c in parts) else None
    positions = sum(int(c.get("positions") or 0) for c in known)
    forward = sum(c["forward_s"] for c in known) if wall is not None and all("forward_s" in c for c in known) \
        else None
    return {"wall_s": wall, "energy_j": energy, "positions_per_s": positions / wall if wall else None,
            "forward_s": forward, "shards": len(shards)}


def _shard_path(pdir: Path, i: int, n: int) -> Path:
    return pdir / f"shard-{i:05d}-of-{n:05d}.h5"


def _done(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with TokenStore.open(path) as s:
            return s.meta.get("key") == key
    except StoreError as exc:
        log.warning("%s: dumped again (%s)", path, exc)
        return False


def _shard_count(pdir: Path, p: TokenPlan, shard: tuple[int, int] | None) -> int:
    """The shards of this dump: ``--shard``'s n, else the n of shards already in the partial folder (written by
    ``--shard`` jobs), else one per ``chunk`` sequences."""
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise MtdError(f"--shard {i}/{n}: expected i in 0..{n - 1}")
        if n > len(p.sequences):
            raise MtdError(f"--shard {i}/{n}: more shards than the {len(p.sequences)} sequences")
        return n
    found = {int(m.group(2)) for f in (pdir.iterdir() if pdir.is_dir() else ()) if (m := SHARD.fullmatch(f.name))}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise MtdError(f"{pdir} holds shards of {sorted(found)} shards each: remove the folder, or the shards of one "
                       "count")
    return max(1, math.ceil(len(p.sequences) / p.settings.chunk))


def _estimate_bytes(p: TokenPlan) -> int:
    """The store's size at the widest support (n k ids a position) and, with the dense check, its dense logits."""
    n, positions = len(p.teachers), sum(max(len(s) - 1, 0) for s in p.sequences)
    u = n * p.settings.k
    per = 4 * u + 2 * u * n + 4 * n * len(p.settings.temperatures) + 8 * n + 8
    dense = 4 * n * p.vocab if p.settings.dense_check else 0
    return int(positions * (per + dense))


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1:
        raise MtdError(f"--shard {text!r}: expected I/N, shard I (from 0) of N, e.g. 0/8")
    return int(m.group(1)), int(m.group(2))
