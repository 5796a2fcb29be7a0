"""Writing a store so that a killed dump resumes and ends identical (see ``format.py``)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..errors import StoreError
from ..utils import atomic_path, atomic_write_json, fsync_dir
from .format import (
    ATTR_ENERGY,
    ATTR_FINGERPRINT,
    ATTR_FORMAT,
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
    StoreSpec,
    check_finite_logits,
    partial_dir,
)

log = logging.getLogger(__name__)


class StoreWriter:
    """Builds a store from pieces of work that each survive SIGKILL once written.

    >>> w = StoreWriter.open(path, spec)            # starts, or resumes with the same spec
    >>> if not w.has_logits(t, 0, 512): w.put_logits(t, 0, logits_of_examples_0_to_512)
    >>> w.put(LABEL, labels); w.put_dev(t, dev_logits); ...
    >>> w.finish()                                   # NAME.h5 appears, complete

    ``put_*`` calls may come in any order and be repeated (same content); the
    merged file depends only on the data, never on the order of work.
    """

    def __init__(self, path: Path, spec: StoreSpec):
        self.path, self.spec, self.dir = path, spec, partial_dir(path)

    @classmethod
    def open(cls, path: str | os.PathLike, spec: StoreSpec) -> StoreWriter:
        path = Path(path)
        spec.validate()
        pdir = partial_dir(path)
        spec_file = pdir / "spec.json"
        if spec_file.exists():
            old = json.loads(spec_file.read_text())
            if old != spec.to_json():
                diff = sorted(k for k in set(old) | set(spec.to_json()) if old.get(k) != spec.to_json().get(k))
                raise StoreError(
                    f"{pdir} holds an unfinished dump with other settings ({', '.join(diff)}); "
                    "remove it or dump with the same settings")
            log.info("resuming the unfinished dump in %s", pdir)
        else:
            pdir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(spec_file, spec.to_json())
        return cls(path, spec)

    # shard names -----------------------------------------------------------
    def _shard(self, kind: str, teacher: int | None = None, start: int | None = None,
               stop: int | None = None) -> Path:
        name = kind.replace("/", "_")
        if teacher is not None:
            name += f".t{teacher}"
        if start is not None:
            name += f".{start:010d}-{stop:010d}"
        return self.dir / f"{name}.npz"

    def _write(self, shard: Path, **arrays: np.ndarray) -> None:
        with atomic_path(shard) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    # whole small arrays ----------------------------------------------------
    def put(self, name: str, values: np.ndarray) -> None:
        """A whole small dataset: ``examples/label``, ``examples/source``, ``views``, ``dev/label``…"""
        self._write(self._shard(name), values=np.asarray(values))

    def has(self, name: str) -> bool:
        return self._shard(name).exists()

    # logits -------------------------------------------------------------------
    def put_logits(self, teacher: int, start: int, values: np.ndarray) -> None:
        """Raw logits of ``teacher`` for examples ``start:start+len(values)``: (n, [V,] C)."""
        want = (self.spec.num_views,) if self.spec.num_views else ()
        want = (*want, self.spec.num_labels)
        values = np.asarray(values)
        if values.shape[1:] != want or start + len(values) > self.spec.num_examples:
            raise StoreError(f"logits block of shape {values.shape} at {start} does not fit {self.spec.logits_shape()}")
        shard = self._shard(LOGITS, teacher, start, start + len(values))
        self._write(shard, values=values.astype(self.spec.logits_dtype))

    def has_logits(self, teacher: int, start: int, stop: int) -> bool:
        return self._shard(LOGITS, teacher, start, stop).exists()

    def put_dev(self, teacher: int, values: np.ndarray, metric: float) -> None:
        """A teacher's dev-set logits (M, C) and its dev score."""
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (self.spec.num_dev, self.spec.num_labels):
            want = (self.spec.num_dev, self.spec.num_labels)
            raise StoreError(f"dev logits of shape {values.shape}, expected {want}")
        self._write(self._shard(DEV_LOGITS, teacher), values=values, metric=np.float64(metric))

    def has_dev(self, teacher: int) -> bool:
        return self._shard(DEV_LOGITS, teacher).exists()

    # primary states -----------------------------------------------------------
    def put_primary(self, teacher: int, start: int, lengths: np.ndarray, hidden: np.ndarray,
                    attn: np.ndarray | None = None) -> None:
        """Unpadded states of examples ``start:start+len(lengths)``.

        ``hidden``: (sum_i layers*L_i, H) rows, example by example, each (layers, L_i, H);
        ``attn``: flat, example by example, each (layers, heads, L_i, L_i).
        """
        ps = self.spec.primaries[teacher]
        lengths = np.asarray(lengths, dtype=np.int32)
        rows = int(lengths.sum()) * len(ps.hidden_layers)
        if hidden.shape != (rows, ps.hidden_size):
            raise StoreError(f"hidden block {hidden.shape} does not match lengths (expected {(rows, ps.hidden_size)})")
        arrays = {"lengths": lengths, "hidden": np.asarray(hidden, dtype=np.float16)}
        if ps.attn_layers:
            entries = int((lengths.astype(np.int64) ** 2).sum()) * len(ps.attn_layers) * ps.num_heads
            if attn is None or attn.shape != (entries,):
                got = None if attn is None else attn.shape
                raise StoreError(f"attention block {got} does not match lengths ({entries},)")
            arrays["attn"] = np.asarray(attn, dtype=np.float16)
        self._write(self._shard(PRIMARY, teacher, start, start + len(lengths)), **arrays)

    def has_primary(self, teacher: int, start: int, stop: int) -> bool:
        return self._shard(PRIMARY, teacher, start, stop).exists()

    # costs ---------------------------------------------------------------------
    def add_cost(self, wall_s: float, energy_j: float | None) -> None:
        """Accumulate the dump's cost over interrupted sessions (recorded, never compared)."""
        f = self.dir / "costs.json"
        c = json.loads(f.read_text()) if f.exists() else {"wall_s": 0.0, "energy_j": 0.0}
        c["wall_s"] += wall_s
        c["energy_j"] = None if energy_j is None or c["energy_j"] is None else c["energy_j"] + energy_j
        atomic_write_json(f, c)

    # finish ------------------------------------------------------------------
    def finish(self) -> Path:
        """Merge the shards into ``NAME.h5`` (atomically) and remove the partial folder."""
        tmp = self.dir / "merge.tmp"
        if tmp.exists():
            tmp.unlink()  # a merge killed half-way: start it again
        try:
            with h5py.File(tmp, "w") as f:
                self._write_attrs(f)
                self._merge_small(f)
                self._merge_logits(f)
                self._merge_dev(f)
                for t in sorted(self.spec.primaries):
                    self._merge_primary(f, t)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.path

    def _write_attrs(self, f: h5py.File) -> None:
        s = self.spec
        costs_file = self.dir / "costs.json"
        costs = json.loads(costs_file.read_text()) if costs_file.exists() else {"wall_s": 0.0, "energy_j": None}
        attrs = {
            ATTR_FORMAT: FORMAT, ATTR_VERSION: VERSION, "package_version": __version__,
            "task": s.task, "metric": s.metric, "num_labels": s.num_labels, "label_names": list(s.label_names),
            "teacher_model": s.teacher_model, "teacher_seeds": list(s.teacher_seeds),
            "teacher_paths": list(s.teacher_paths), "teachers_sha256": list(s.teachers_sha256),
            "precision": s.precision, ATTR_FINGERPRINT: s.fingerprint,
            "spec_json": json.dumps(s.to_json(), sort_keys=True), ATTR_WALL: float(costs["wall_s"]),
            ATTR_ENERGY: np.nan if costs["energy_j"] is None else float(costs["energy_j"]),
            "created_utc": _utc_now(),
        }
        for k, v in attrs.items():
            f.attrs[k] = v if not isinstance(v, list) else _attr_list(v)

    def _load(self, shard: Path) -> dict[str, np.ndarray]:
        if not shard.exists():
            raise StoreError(f"the dump is incomplete: {shard.name} is missing from {self.dir}")
        with np.load(shard) as z:
            return {k: z[k] for k in z.files}

    def _merge_small(self, f: h5py.File) -> None:
        n, s = self.spec.num_examples, self.spec
        required = {LABEL: (n,), SOURCE: (n,)}
        if s.num_views:
            required[VIEWS] = (s.num_views, 3)
        if s.num_dev:
            required[DEV_LABEL] = (s.num_dev,)
        dtypes = {LABEL: np.int64, SOURCE: np.int64, VIEWS: np.int16, DEV_LABEL: np.int64}
        for name, shape in required.items():
            if name == SOURCE and not self.has(SOURCE):
                values = np.arange(n, dtype=np.int64)  # no augmentation: every example is its own source
            else:
                values = self._load(self._shard(name))["values"]
            if values.shape != shape:
                raise StoreError(f"{name} has shape {values.shape}, expected {shape}")
            f.create_dataset(name, data=values.astype(dtypes[name]))

    def _ranges(self, kind: str, teacher: int) -> list[tuple[int, int, Path]]:
        """The shards of one teacher, sorted, checked to tile 0..N exactly."""
        prefix = f"{kind.replace('/', '_')}.t{teacher}."
        found = []
        for p in self.dir.glob(prefix + "*.npz"):
            m = re.fullmatch(r"(\d+)-(\d+)\.npz", p.name[len(prefix):])
            if m:
                found.append((int(m[1]), int(m[2]), p))
        found.sort()
        pos = 0
        for a, b, _ in found:
            if a != pos:
                raise StoreError(f"the dump is incomplete: teacher {teacher} {kind} lacks examples {pos}..{a - 1}")
            pos = b
        if pos != self.spec.num_examples:
            raise StoreError(f"the dump is incomplete: teacher {teacher} {kind} lacks examples "
                             f"{pos}..{self.spec.num_examples - 1}")
        return found

    def _merge_logits(self, f: h5py.File) -> None:
        s = self.spec
        ds = f.create_dataset(LOGITS, shape=s.logits_shape(), dtype=s.logits_dtype)  # contiguous
        for t in range(s.num_teachers):
            for a, b, shard in self._ranges(LOGITS, t):
                block = self._load(shard)["values"]
                for lo in range(0, b - a, MERGE_ROWS):  # bounded memory
                    hi = min(b - a, lo + MERGE_ROWS)
                    ds[a + lo:a + hi, ..., t, :] = block[lo:hi]

    def _merge_dev(self, f: h5py.File) -> None:
        s = self.spec
        metrics = np.zeros(s.num_teachers, dtype=np.float64)
        dev = np.zeros((s.num_dev, s.num_teachers, s.num_labels), dtype=np.float32) if s.num_dev else None
        for t in range(s.num_teachers):
            got = self._load(self._shard(DEV_LOGITS, t)) if (s.num_dev or self.has_dev(t)) else None
            if got is None:
                metrics[t] = np.nan
                continue
            metrics[t] = float(got["metric"])
            if dev is not None:
                dev[:, t] = got["values"]
        f.create_dataset(DEV_METRIC, data=metrics)
        if dev is not None:
            f.create_dataset(DEV_LOGITS, data=dev)

    def _merge_primary(self, f: h5py.File, t: int) -> None:
        ps = self.spec.primaries[t]
        shards = self._ranges(PRIMARY, t)
        lengths = np.concatenate([self._load(p)["lengths"] for _, _, p in shards]).astype(np.int32)
        g = f.create_group(f"{PRIMARY}/{t}")
        for k, v in asdict(ps).items():
            g.attrs[k] = _attr_list(list(v)) if isinstance(v, tuple) else v
        g.create_dataset("lengths", data=lengths)
        per_hidden = lengths.astype(np.int64) * len(ps.hidden_layers)
        h_off = np.concatenate([[0], np.cumsum(per_hidden)]).astype(np.int64)
        g.create_dataset("hidden_offsets", data=h_off)
        hidden = g.create_dataset("hidden", shape=(int(h_off[-1]), ps.hidden_size), dtype=np.float16)
        attn = None
        if ps.attn_layers:
            per_attn = lengths.astype(np.int64) ** 2 * len(ps.attn_layers) * ps.num_heads
            a_off = np.concatenate([[0], np.cumsum(per_attn)]).astype(np.int64)
            g.create_dataset("attn_offsets", data=a_off)
            attn = g.create_dataset("attn", shape=(int(a_off[-1]),), dtype=np.float16)
        for a, b, p in shards:
            z = self._load(p)
            hidden[h_off[a]:h_off[b]] = z["hidden"]
            if attn is not None:
                attn[a_off[a]:a_off[b]] = z["attn"]


def _attr_list(values: list) -> Any:
    if values and all(isinstance(v, str) for v in values):
        return np.array(values, dtype=h5py.string_dtype())
    return np.asarray(values, dtype=np.int64 if all(isinstance(v, (int, np.integer)) for v in values) else None)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_store(path: str | os.PathLike, spec: StoreSpec, logits: np.ndarray, labels: np.ndarray,
                dev_logits: np.ndarray | None = None, dev_labels: np.ndarray | None = None,
                dev_metric: Any = None, views: np.ndarray | None = None,
                sources: np.ndarray | None = None) -> Path:
    """Write a whole store from in-memory arrays (``mtd-cache import``; teachers from any framework).

    ``logits``: (N, T, C) or (N, V, T, C) raw logits, before any temperature;
    ``dev_logits``: (M, T, C); ``dev_metric``: (T,) teacher dev scores (NaN when unknown).
    """
    logits = np.asarray(logits)
    if logits.shape != spec.logits_shape():
        raise StoreError(f"logits of shape {logits.shape} do not match the spec's {spec.logits_shape()}")
    check_finite_logits(logits, "logits")
    if dev_logits is not None:
        check_finite_logits(np.asarray(dev_logits), "dev logits")
    if Path(path).exists():
        raise StoreError(f"{path} exists already: remove it or choose another --out")
    w = StoreWriter.open(path, spec)
    for t in range(spec.num_teachers):
        w.put_logits(t, 0, logits[..., t, :])
        if dev_logits is not None:
            w.put_dev(t, np.asarray(dev_logits)[:, t], np.nan if dev_metric is None else dev_metric[t])
    w.put(LABEL, labels)
    if sources is not None:
        w.put(SOURCE, sources)
    if views is not None:
        w.put(VIEWS, views)
    if dev_labels is not None:
        w.put(DEV_LABEL, dev_labels)
    return w.finish()
