"""The merge: a finished dump's shards into one HDF5 file of contiguous datasets, each with its checksum.

Everything is written in a fixed order from the shards alone, so the file depends only on the data,
never on the order of the work. Memory stays bounded whatever N is: the logits go in blocks of
``MERGE_ROWS`` examples (every teacher's rows of a block together, so the block is the dataset's
bytes in order and is hashed as written), the primaries' states shard by shard.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..core.errors import StoreError
from ..core.safe_files import read_text
from .format import (
    ATTR_ENERGY,
    ATTR_FINGERPRINT,
    ATTR_FORMAT,
    ATTR_FORWARD_CHUNKS,
    ATTR_FORWARD_J,
    ATTR_FORWARD_Q25,
    ATTR_FORWARD_Q75,
    ATTR_FORWARD_S,
    ATTR_VERSION,
    ATTR_WALL,
    DEV_LABEL,
    DEV_LOGITS,
    DEV_METRIC,
    FORMAT,
    LABEL,
    LOGITS,
    MERGE_ROWS,
    PRIMARY,
    SOURCE,
    VERSION,
    VIEWS,
)
from .integrity import CHECKSUM, Checksum, checksum_of
from .seal import write_seal


def merge_into(w: Any, f: h5py.File) -> None:
    """Write the store of writer ``w``'s shards into the open file ``f``."""
    write_attrs(w, f)
    _merge_small(w, f)
    _merge_logits(w, f)
    _merge_dev(w, f)
    for t in sorted(w.spec.primaries):
        _merge_primary(w, f, t)
    write_seal(f)  # last: over every attribute and dataset checksum written above


def primary_datasets(w: Any) -> list[str]:
    """The names of the primaries' datasets (verified by reading them back before the store is renamed)."""
    names = []
    for t, ps in sorted(w.spec.primaries.items()):
        names += [f"{PRIMARY}/{t}/{n}" for n in ("lengths", "hidden_offsets", "hidden")]
        names += [f"{PRIMARY}/{t}/{n}" for n in ("attn_offsets", "attn")] if ps.attn_layers else []
    return names


def write_attrs(w: Any, f: h5py.File) -> None:
    s = w.spec
    costs_file = w.dir / "costs.json"
    costs = json.loads(read_text(costs_file)) if costs_file.exists() else {"wall_s": 0.0, "energy_j": None}
    attrs = {
        ATTR_FORMAT: FORMAT, ATTR_VERSION: VERSION, "package_version": __version__,
        "task": s.task, "metric": s.metric, "num_labels": s.num_labels, "label_names": list(s.label_names),
        "teacher_model": s.teacher_model, "teacher_seeds": list(s.teacher_seeds),
        "teacher_paths": list(s.teacher_paths), "teachers_sha256": list(s.teachers_sha256),
        "precision": s.precision, ATTR_FINGERPRINT: s.fingerprint,
        "spec_json": json.dumps(s.to_json(), sort_keys=True), ATTR_WALL: float(costs["wall_s"]),
        ATTR_ENERGY: np.nan if costs["energy_j"] is None else float(costs["energy_j"]),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **forward_cost(costs),
    }
    for k, v in attrs.items():
        f.attrs[k] = v if not isinstance(v, list) else attr_list(v)


def forward_cost(costs: dict[str, Any]) -> dict[str, float]:
    """One teacher inference per (example, view) item, measured robustly: the median over the dump's chunks of
    seconds / items (the plain teachers' chunks, the primaries' only when every teacher is one; each session's
    first chunk of a teacher left out as its warm-up when the teacher has others), with the quartiles and the
    number of chunks; joules: the dump's energy over every item it ran."""
    chunks = []
    for entry in (costs.get("forward") or {}).values():
        if isinstance(entry, list):  # written by a version that kept one total per teacher
            entry = {"chunks": [[entry[0], entry[1], True]], "primary": bool(entry[2])}
        got = [(float(s), int(n), bool(warm)) for s, n, warm in entry["chunks"] if n > 0 and s > 0]
        steady = [c for c in got if not c[2]] or got
        chunks += [(s / n, n, bool(entry["primary"])) for s, n, _ in steady]
    rates = [r for r, _, primary in chunks if not primary] or [r for r, _, _ in chunks]
    if not rates:
        return {}
    q25, q50, q75 = (float(q) for q in np.quantile(rates, [0.25, 0.5, 0.75]))
    out = {ATTR_FORWARD_S: q50, ATTR_FORWARD_Q25: q25, ATTR_FORWARD_Q75: q75, ATTR_FORWARD_CHUNKS: len(rates)}
    if costs.get("energy_j"):
        out[ATTR_FORWARD_J] = float(costs["energy_j"]) / sum(n for _, n, _ in chunks)
    return out


def attr_list(values: list) -> Any:
    if values and all(isinstance(v, str) for v in values):
        return np.array(values, dtype=h5py.string_dtype())
    return np.asarray(values, dtype=np.int64 if all(isinstance(v, (int, np.integer)) for v in values) else None)


def load(w: Any, shard: Path) -> dict[str, np.ndarray]:
    if not shard.exists():
        raise StoreError(f"the dump is incomplete: {shard.name} is missing from {w.dir}")
    with np.load(shard, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _dataset(group: Any, name: str, values: np.ndarray) -> None:
    """A small dataset written whole, with its checksum."""
    group.create_dataset(name, data=values).attrs[CHECKSUM] = checksum_of(values)


def _merge_small(w: Any, f: h5py.File) -> None:
    n, s = w.spec.num_examples, w.spec
    required = {LABEL: (n,), SOURCE: (n,)}
    if s.num_views:
        required[VIEWS] = (s.num_views, 3)
    if s.num_dev:
        required[DEV_LABEL] = (s.num_dev,)
    dtypes = {LABEL: np.int64, SOURCE: np.int64, VIEWS: np.int16, DEV_LABEL: np.int64}
    for name, shape in required.items():
        if name == SOURCE and not w.has(SOURCE):
            values = np.arange(n, dtype=np.int64)  # no augmentation: every example is its own source
        else:
            values = load(w, w.shard(name))["values"]
        if values.shape != shape:
            raise StoreError(f"{name} has shape {values.shape}, expected {shape}")
        _dataset(f, name, values.astype(dtypes[name]))


def ranges(w: Any, kind: str, teacher: int) -> list[tuple[int, int, Path]]:
    """The shards of one teacher, sorted, checked to tile 0..N exactly."""
    prefix = f"{kind.replace('/', '_')}.t{teacher}."
    found = []
    for p in w.dir.glob(prefix + "*.npz"):
        m = re.fullmatch(r"(\d+)-(\d+)\.npz", p.name[len(prefix):])
        if m:
            found.append((int(m[1]), int(m[2]), p))
    found.sort()
    pos = 0
    for a, b, _ in found:
        if a != pos:
            raise StoreError(f"the dump is incomplete: teacher {teacher} {kind} lacks examples {pos}..{a - 1}")
        pos = b
    if pos != w.spec.num_examples:
        raise StoreError(f"the dump is incomplete: teacher {teacher} {kind} lacks examples "
                         f"{pos}..{w.spec.num_examples - 1}")
    return found


class _Rows:
    """One teacher's logits read in order, across the shard boundaries, one shard in memory at a time."""

    def __init__(self, w: Any, shards: list[tuple[int, int, Path]]):
        self.w, self.shards, self.i, self.values = w, shards, 0, None

    def take(self, lo: int, hi: int) -> np.ndarray:
        parts = []
        while lo < hi:
            a, b, path = self.shards[self.i]
            if self.values is None:
                self.values = load(self.w, path)["values"]
            stop = min(hi, b)
            parts.append(self.values[lo - a:stop - a])
            lo = stop
            if stop == b:
                self.i, self.values = self.i + 1, None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _merge_logits(w: Any, f: h5py.File) -> None:
    s = w.spec
    shape = s.logits_shape()
    ds = f.create_dataset(LOGITS, shape=shape, dtype=s.logits_dtype)  # contiguous
    rows = [_Rows(w, ranges(w, LOGITS, t)) for t in range(s.num_teachers)]
    digest = Checksum()
    for lo in range(0, s.num_examples, MERGE_ROWS):  # bounded memory
        hi = min(s.num_examples, lo + MERGE_ROWS)
        block = np.empty((hi - lo, *shape[1:]), dtype=s.logits_dtype)
        for t, r in enumerate(rows):
            block[..., t, :] = r.take(lo, hi)
        ds[lo:hi] = block
        digest.update(block)
    ds.attrs[CHECKSUM] = digest.hexdigest()


def _merge_dev(w: Any, f: h5py.File) -> None:
    s = w.spec
    metrics = np.zeros(s.num_teachers, dtype=np.float64)
    dev = np.zeros((s.num_dev, s.num_teachers, s.num_labels), dtype=np.float32) if s.num_dev else None
    for t in range(s.num_teachers):
        got = load(w, w.shard(DEV_LOGITS, t)) if (s.num_dev or w.has_dev(t)) else None
        if got is None:
            metrics[t] = np.nan
            continue
        metrics[t] = float(got["metric"])
        if dev is not None:
            dev[:, t] = got["values"]
    _dataset(f, DEV_METRIC, metrics)
    if dev is not None:
        _dataset(f, DEV_LOGITS, dev)


def _merge_primary(w: Any, f: h5py.File, t: int) -> None:
    ps = w.spec.primaries[t]
    shards = ranges(w, PRIMARY, t)
    lengths = np.concatenate([load(w, p)["lengths"] for _, _, p in shards]).astype(np.int32)
    g = f.create_group(f"{PRIMARY}/{t}")
    for k, v in asdict(ps).items():
        g.attrs[k] = attr_list(list(v)) if isinstance(v, tuple) else v
    _dataset(g, "lengths", lengths)
    per_hidden = lengths.astype(np.int64) * len(ps.hidden_layers)
    h_off = np.concatenate([[0], np.cumsum(per_hidden)]).astype(np.int64)
    _dataset(g, "hidden_offsets", h_off)
    hidden = g.create_dataset("hidden", shape=(int(h_off[-1]), ps.hidden_size), dtype=np.float16)
    attn, sums = None, {"hidden": Checksum(), "attn": Checksum()}
    if ps.attn_layers:
        per_attn = lengths.astype(np.int64) ** 2 * len(ps.attn_layers) * ps.num_heads
        a_off = np.concatenate([[0], np.cumsum(per_attn)]).astype(np.int64)
        _dataset(g, "attn_offsets", a_off)
        attn = g.create_dataset("attn", shape=(int(a_off[-1]),), dtype=np.float16)
    for a, b, p in shards:  # in order: the bytes hashed are the dataset's
        z = load(w, p)
        hidden[h_off[a]:h_off[b]] = z["hidden"]
        sums["hidden"].update(z["hidden"].astype(np.float16))
        if attn is not None:
            attn[a_off[a]:a_off[b]] = z["attn"]
            sums["attn"].update(z["attn"].astype(np.float16))
    hidden.attrs[CHECKSUM] = sums["hidden"].hexdigest()
    if attn is not None:
        attn.attrs[CHECKSUM] = sums["attn"].hexdigest()
