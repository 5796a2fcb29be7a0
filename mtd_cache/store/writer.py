"""Writing a store so that a killed dump resumes and ends identical (see ``format.py``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.errors import ResourceError, StoreError, is_resource_fault
from ..core.locks import describe_owner, file_lock
from ..core.progress import human_bytes
from ..core.safe_files import atomic_path, atomic_write_json, check_target, fsync_dir, make_dirs, read_text
from .format import (
    DEV_LABEL,
    DEV_LOGITS,
    LABEL,
    LOGITS,
    PRIMARY,
    SOURCE,
    VIEWS,
    StoreSpec,
    check_finite_logits,
    partial_dir,
)
from .integrity import verify_file
from .merge import merge_into, primary_datasets

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
        """Start a dump of ``spec``, or resume the unfinished one with the same spec.

        The caller holds ``output_lock(path)``: one writer at a time. A partial folder without a
        readable ``spec.json`` (left by a crash between its creation and the spec's write, or by a
        removal racing a writer) cannot say what its pieces are: it is discarded, never adopted.
        """
        path = Path(path)
        spec.validate()
        pdir = partial_dir(path)
        check_target(path, "store")
        check_target(pdir, "folder")
        spec_file = pdir / "spec.json"
        old = _read_spec(spec_file)
        if old is None and pdir.exists():
            log.warning("discarding %s: its pieces have no readable spec.json, so nothing says which teachers and "
                        "settings made them", pdir)
            shutil.rmtree(pdir)
        if old is not None:
            if old != spec.to_json():
                diff = sorted(k for k in set(old) | set(spec.to_json()) if old.get(k) != spec.to_json().get(k))
                raise StoreError(
                    f"{pdir} holds an unfinished dump with other settings ({', '.join(diff)}); "
                    "remove it or dump with the same settings")
            log.info("resuming the unfinished dump in %s", pdir)
        else:
            make_dirs(pdir)
            atomic_write_json(spec_file, spec.to_json())
        return cls(path, spec)

    # shard names -----------------------------------------------------------
    def shard(self, kind: str, teacher: int | None = None, start: int | None = None,
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
        self._write(self.shard(name), values=np.asarray(values))

    def has(self, name: str) -> bool:
        return self.shard(name).exists()

    # logits -------------------------------------------------------------------
    def put_logits(self, teacher: int, start: int, values: np.ndarray) -> None:
        """Raw logits of ``teacher`` for examples ``start:start+len(values)``: (n, [V,] C)."""
        want = (self.spec.num_views,) if self.spec.num_views else ()
        want = (*want, self.spec.num_labels)
        values = np.asarray(values)
        if values.shape[1:] != want or start + len(values) > self.spec.num_examples:
            raise StoreError(f"logits block of shape {values.shape} at {start} does not fit {self.spec.logits_shape()}")
        shard = self.shard(LOGITS, teacher, start, start + len(values))
        with np.errstate(over="ignore"):
            values = values.astype(self.spec.logits_dtype)
        check_finite_logits(values, f"logits as {self.spec.logits_dtype}", start, teacher=teacher)  # float16 overflow
        self._write(shard, values=values)

    def has_logits(self, teacher: int, start: int, stop: int) -> bool:
        return self.shard(LOGITS, teacher, start, stop).exists()

    def put_dev(self, teacher: int, values: np.ndarray, metric: float) -> None:
        """A teacher's dev-set logits (M, C) and its dev score."""
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (self.spec.num_dev, self.spec.num_labels):
            want = (self.spec.num_dev, self.spec.num_labels)
            raise StoreError(f"dev logits of shape {values.shape}, expected {want}")
        self._write(self.shard(DEV_LOGITS, teacher), values=values, metric=np.float64(metric))

    def has_dev(self, teacher: int) -> bool:
        return self.shard(DEV_LOGITS, teacher).exists()

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
        _check_finite_states(arrays["hidden"], f"primary {teacher} hidden states", start)
        if ps.attn_layers:
            entries = int((lengths.astype(np.int64) ** 2).sum()) * len(ps.attn_layers) * ps.num_heads
            if attn is None or attn.shape != (entries,):
                got = None if attn is None else attn.shape
                raise StoreError(f"attention block {got} does not match lengths ({entries},)")
            arrays["attn"] = np.asarray(attn, dtype=np.float16)
            _check_finite_states(arrays["attn"], f"primary {teacher} attention scores", start)
        self._write(self.shard(PRIMARY, teacher, start, start + len(lengths)), **arrays)

    def has_primary(self, teacher: int, start: int, stop: int) -> bool:
        return self.shard(PRIMARY, teacher, start, stop).exists()

    # costs ---------------------------------------------------------------------
    def add_cost(self, wall_s: float, energy_j: float | None,
                 forward: dict[int, tuple[list[tuple[float, int]], bool]] | None = None) -> None:
        """Accumulate the dump's cost over interrupted sessions (recorded, never compared); ``forward``: per
        teacher, each chunk's inference seconds and (example, view) items this session, and whether it is a
        primary (its time includes copying its states out). A session's first chunk of a teacher is marked warm-up."""
        f = self.dir / "costs.json"
        c = json.loads(read_text(f)) if f.exists() else {"wall_s": 0.0, "energy_j": 0.0}
        c["wall_s"] += wall_s
        c["energy_j"] = None if energy_j is None or c["energy_j"] is None else c["energy_j"] + energy_j
        done = c.setdefault("forward", {})
        for t, (chunks, primary) in (forward or {}).items():
            was = done.get(str(t), {"chunks": [], "primary": primary})
            if isinstance(was, list):  # written by a version that kept one total per teacher
                was = {"chunks": [[was[0], was[1], True]] if was[1] else [], "primary": bool(was[2])}
            was["chunks"] += [[float(sec), int(n), i == 0] for i, (sec, n) in enumerate(chunks)]
            was["primary"] = bool(primary)
            done[str(t)] = was
        atomic_write_json(f, c)

    # finish ------------------------------------------------------------------
    def finish(self) -> Path:
        """Merge the shards into ``NAME.h5`` (atomically) and remove the partial folder.

        Before merging, the free space must hold the merged file (about the shards' size): a full disk
        is refused in one line with the work kept, not met half-way in HDF5. The primary teachers'
        states are read back and checked against the checksums written with them before the file is
        renamed into place.
        """
        tmp = self.dir / "merge.tmp"
        tmp.unlink(missing_ok=True)  # a merge killed half-way: start it again (a planted link: removed)
        self._check_space()
        try:
            with h5py.File(tmp, "w-") as f:  # O_EXCL: created here, never through a link
                merge_into(self, f)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            bad = verify_file(tmp, primary_datasets(self))["bad"]
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, (OSError, RuntimeError)):  # h5py's errors: disk full, I/O
                raise _merge_failure(tmp, self.dir, exc) from None
            raise
        if bad:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{bad[0]} read back from {tmp} does not match what was written (checksum): the disk "
                             f"returned other bytes; the pieces are kept in {self.dir}, run the dump again")
        check_target(self.path, "store")
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.path

    def _check_space(self) -> None:
        data = sum(p.stat().st_size for p in self.dir.glob("*.npz"))
        need = data + max(data // 100, 1 << 16)  # the data once more (the pieces are there already), + metadata
        free = shutil.disk_usage(self.dir).free
        if need > free:
            raise ResourceError(f"not enough free space to merge {self.path}: it needs about {human_bytes(need)}, "
                                f"{self.dir.parent} has {human_bytes(free)} free; the dump's pieces are kept in "
                                f"{self.dir}: free some space and run the dump again to finish it")


def _check_finite_states(values: np.ndarray, what: str, start: int) -> None:
    """States as stored (float16) hold no NaN or infinity: a student would train on them."""
    bad = np.flatnonzero(~np.isfinite(values.reshape(-1)))
    if len(bad):
        raise StoreError(f"{what} of the block from example {start} hold a non-finite value as float16 "
                         f"(element {int(bad[0])}): not stored")


def _read_spec(spec_file: Path) -> dict | None:
    try:
        spec = json.loads(read_text(spec_file))
    except (OSError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def _merge_failure(tmp: Path, pieces: Path, exc: BaseException) -> Exception:
    cause = " ".join(str(exc).split())[:200]
    if is_resource_fault(exc):
        return ResourceError(f"writing {tmp} failed: {cause}; the dump's pieces are kept in {pieces}: free some "
                             "space and run the dump again to finish it")
    return StoreError(f"writing {tmp} failed: {cause}")


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """One writer per store: a second dump or import of the same output is refused, naming the first."""
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    with file_lock(lock, wait=False) as held:
        if not held:
            raise StoreError(f"{path} is being written by {describe_owner(lock)}: wait for it to finish, "
                             "or write to another --out")
        yield


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
    if logits.dtype != np.dtype(spec.logits_dtype):
        with np.errstate(over="ignore"):  # beyond float16's range: an infinity, refused by name just below
            check_finite_logits(logits.astype(spec.logits_dtype), f"logits as {spec.logits_dtype}")
    if dev_logits is not None:
        check_finite_logits(np.asarray(dev_logits), "dev logits")
    with output_lock(path):
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
