"""Reading a store: validated on open, logits gathered from a shared memory map."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np

from ..errors import StoreError
from ..utils import prefetch
from .format import (ATTR_FINGERPRINT, ATTR_FORMAT, ATTR_VERSION, DEV_LABEL, DEV_LOGITS, DEV_METRIC, FORMAT,
                     LABEL, LOGITS, PRIMARY, SOURCE, VERSION, VIEWS, StoreSpec)
from .writer import check_finite_logits, partial_dir

log = logging.getLogger(__name__)

FINITE_CHECK_ROWS = 1 << 16
_FINITE_OK: set[tuple] = set()  # (path, device, inode, size, mtime) of files whose logits were scanned here


@dataclass(frozen=True)
class _Extent:
    """Where a contiguous, uncompressed dataset's bytes lie in the file."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _extent(ds: h5py.Dataset, file_size: int) -> _Extent | None:
    """The dataset's byte extent, or None when it is chunked/compressed (read through h5py then)."""
    if ds.chunks is not None or ds.compression is not None:
        return None
    ext = _Extent(ds.id.get_offset() or 0, tuple(ds.shape), ds.dtype)
    if ext.nbytes and ds.id.get_offset() is None:
        raise StoreError(f"{ds.file.filename}: dataset {ds.name} was never written")
    if ext.offset + ext.nbytes > file_size:
        raise StoreError(f"{ds.file.filename} is truncated: {ds.name} ends at byte {ext.offset + ext.nbytes:,} "
                         f"but the file has {file_size:,}")
    return ext


def _map(path: Path, ds: h5py.Dataset, file_size: int) -> np.ndarray:
    """A read-only view of a dataset: memory-mapped when contiguous (one copy per machine)."""
    ext = _extent(ds, file_size)
    if ext is None:
        return ds[...]
    if ext.nbytes == 0:
        return np.zeros(ext.shape, ext.dtype)
    return np.memmap(path, dtype=ext.dtype, mode="r", offset=ext.offset, shape=ext.shape)


class TeacherStore:
    """A validated, read-only teacher store.

    >>> with TeacherStore.open("cache/digits/store.h5") as s:
    ...     z = s.mean_logits(teachers=[0, 2, 5], index=batch_idx, view=batch_views)  # (B, C) float32

    After ``open`` no h5py handle stays open: logits are a memory map of the
    file (shared by every process that reads it), small arrays are in RAM and
    the primary teacher's states are read with ``os.preadv``. The object pickles
    as its path, so DataLoader workers and sweep processes reopen it cheaply
    (the logits' finiteness scan runs once per process and file version).
    """

    def __init__(self, path: Path, attrs: dict[str, Any], arrays: dict[str, np.ndarray],
                 primaries: dict[int, "PrimaryStates"]):
        self.path, self.attrs, self._arrays, self._primaries = path, attrs, arrays, primaries
        self.spec = StoreSpec.from_json(json.loads(attrs["spec_json"]))
        z = np.asarray(arrays[LOGITS])  # plain ndarray view: no memmap subclass overhead
        self._rows = z.reshape(-1, z.shape[-2] * z.shape[-1])  # (N[*V], T*C) rows of the memory map
        self._selections: dict[frozenset, tuple[np.ndarray, int]] = {}

    # opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, expect_fingerprint: str | None = None,
             check_finite: bool = True) -> "TeacherStore":
        path = Path(path)
        _refuse_unfinished(path)
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise StoreError(f"{path} is not a readable HDF5 store (truncated or not HDF5): {_short(exc)}") from None
        with f:
            attrs = {k: _py(v) for k, v in f.attrs.items()}
            _check_identity(path, attrs)
            st = path.stat()
            size = st.st_size
            arrays = {name: _map(path, f[name], size) if name == LOGITS else f[name][...]
                      for name in (LOGITS, LABEL, SOURCE, VIEWS, DEV_METRIC, DEV_LOGITS, DEV_LABEL) if name in f}
            primaries = {int(t): PrimaryStates.from_group(path, g, size) for t, g in f.get(PRIMARY, {}).items()}
        store = cls(path, attrs, arrays, primaries)
        store._check_shapes()
        stamp = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if check_finite and stamp not in _FINITE_OK:  # a finished store does not change: scan it once per process
            store._check_finite()
            _FINITE_OK.add(stamp)
        if expect_fingerprint is not None and expect_fingerprint != store.fingerprint:
            raise StoreError(f"{path} was made from other inputs: store fingerprint {store.fingerprint} "
                             f"!= expected {expect_fingerprint}")
        return store

    def __enter__(self) -> "TeacherStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for p in self._primaries.values():
            p.close()

    def __reduce__(self):
        return (_reopen, (str(self.path), self.fingerprint))

    # identity ------------------------------------------------------------------------------
    task = property(lambda self: self.attrs["task"])
    metric = property(lambda self: self.attrs["metric"])
    fingerprint = property(lambda self: self.attrs[ATTR_FINGERPRINT])
    label_names = property(lambda self: list(self.attrs["label_names"]))
    num_examples = property(lambda self: self._arrays[LOGITS].shape[0])
    num_teachers = property(lambda self: self._arrays[LOGITS].shape[-2])
    num_classes = property(lambda self: self._arrays[LOGITS].shape[-1])
    num_views = property(lambda self: self._arrays[LOGITS].shape[1] if self._arrays[LOGITS].ndim == 4 else 0)
    labels = property(lambda self: self._arrays[LABEL])
    sources = property(lambda self: self._arrays[SOURCE])
    views = property(lambda self: self._arrays.get(VIEWS))
    dev_metric = property(lambda self: self._arrays[DEV_METRIC])
    dev_logits = property(lambda self: self._arrays.get(DEV_LOGITS))
    dev_labels = property(lambda self: self._arrays.get(DEV_LABEL))
    logits = property(lambda self: self._arrays[LOGITS])
    primaries = property(lambda self: sorted(self._primaries))

    # reading ----------------------------------------------------------------------------------
    def mean_logits(self, teachers: Sequence[int], index: Any, view: Any = None) -> np.ndarray:
        """The chosen teachers' raw logits averaged, for a batch: (B, C) float32.

        ``index``: example indices (B,); ``view``: view indices (B,) for image stores.
        The mean is taken over logits, before any temperature or softmax (DESIGN.md).
        """
        if self.num_views:
            if view is None:
                raise StoreError(f"{self.path} has {self.num_views} views per example: pass view=")
            try:  # the row of (example, view) in the flat (N*V, T*C) map; bounds checked in C
                index = np.ravel_multi_index((index, view), (self.num_examples, self.num_views))
            except ValueError as exc:
                raise IndexError(f"example or view index out of range ({self.num_examples} examples, "
                                 f"{self.num_views} views): {exc}") from None
        rows = np.take(self._rows, index, axis=0)  # (B, T*C): one contiguous row per example (and view)
        if rows.dtype != np.float32:
            import torch  # lazily: `mtd-cache inspect` need not load torch
            rows = torch.from_numpy(rows).float().numpy()  # F16C: ~4x faster than numpy's float16 cast
        # The sum over the chosen teachers as one small matmul with a 0/1 selection matrix: exact products,
        # a fixed summation order (the same set gives the same bits), and ~2x faster than a strided
        # reduction over the teacher axis (bench/store_read.py). Stores hold finite logits only (the
        # writer refuses others), so the zero weights of unchosen teachers never meet a NaN.
        w, k = self._selection(teachers)
        out = rows @ w
        out *= 1.0 / k
        return out

    def _selection(self, teachers: Sequence[int]) -> tuple[np.ndarray, int]:
        """The (T*C, C) 0/1 matrix that sums the chosen teachers' logits, cached per set."""
        key = frozenset(teachers)
        hit = self._selections.get(key)
        if hit is None:
            chosen = sorted(int(t) for t in key)
            if not chosen or chosen[0] < 0 or chosen[-1] >= self.num_teachers:
                raise IndexError(f"teachers {chosen} out of range 0..{self.num_teachers - 1}")
            w = np.zeros((self.num_teachers, self.num_classes, self.num_classes), dtype=np.float32)
            w[chosen] = np.eye(self.num_classes, dtype=np.float32)
            hit = self._selections[key] = (w.reshape(-1, self.num_classes), len(chosen))
        return hit

    def primary(self, teacher: int) -> "PrimaryStates":
        if teacher not in self._primaries:
            have = ", ".join(map(str, self.primaries)) or "none"
            raise StoreError(f"{self.path} holds no states of primary teacher {teacher} (it has: {have})")
        return self._primaries[teacher]

    def summary(self) -> dict[str, Any]:
        """What ``mtd-cache inspect`` prints."""
        a = self.attrs
        seeds, paths = a.get("teacher_seeds", []), a.get("teacher_paths", [])
        return {
            "path": str(self.path), "size_bytes": self.path.stat().st_size,
            "format": a[ATTR_FORMAT], "version": a[ATTR_VERSION], "package_version": a.get("package_version"),
            "task": self.task, "metric": self.metric, "label_names": self.label_names,
            "num_examples": self.num_examples, "num_classes": self.num_classes, "num_views": self.num_views,
            "num_dev": 0 if self.dev_labels is None else len(self.dev_labels),
            "logits_dtype": str(self.logits.dtype), "precision": a.get("precision"),
            "teacher_model": a.get("teacher_model"),
            "teachers": [{"index": t, "seed": seeds[t] if t < len(seeds) else None,
                          "path": paths[t] if t < len(paths) else None,
                          "dev_metric": None if np.isnan(m) else float(m)}
                         for t, m in enumerate(self.dev_metric)],
            "primaries": {str(t): p.describe() for t, p in self._primaries.items()},
            "fingerprint": self.fingerprint, "dump_wall_s": a.get("dump_wall_s"),
            "dump_energy_j": None if a.get("dump_energy_j") is None or np.isnan(a["dump_energy_j"]) else a["dump_energy_j"],
            "extra": self.spec.extra,
        }

    # validation -------------------------------------------------------------------------------
    def _check_shapes(self) -> None:
        s, z = self.spec, self._arrays.get(LOGITS)
        if z is None or LABEL not in self._arrays or DEV_METRIC not in self._arrays:
            raise StoreError(f"{self.path} lacks a required dataset ({LOGITS}, {LABEL} or {DEV_METRIC})")
        checks = [(LOGITS, z.shape, s.logits_shape()), (LABEL, self.labels.shape, (s.num_examples,)),
                  (SOURCE, self.sources.shape, (s.num_examples,)), (DEV_METRIC, self.dev_metric.shape, (s.num_teachers,))]
        if s.num_views:
            checks.append((VIEWS, None if self.views is None else self.views.shape, (s.num_views, 3)))
        if s.num_dev:
            checks.append((DEV_LOGITS, None if self.dev_logits is None else self.dev_logits.shape,
                           (s.num_dev, s.num_teachers, s.num_labels)))
        for name, got, want in checks:
            if got != tuple(want):
                raise StoreError(f"{self.path}: {name} has shape {got}, expected {tuple(want)}")
        for t, p in self._primaries.items():
            if len(p.lengths) != s.num_examples:
                raise StoreError(f"{self.path}: primary {t} covers {len(p.lengths)} of {s.num_examples} examples")

    def _check_finite(self) -> None:
        z = self._arrays[LOGITS]
        for lo in range(0, z.shape[0], FINITE_CHECK_ROWS):
            check_finite_logits(np.asarray(z[lo:lo + FINITE_CHECK_ROWS]), f"{self.path}", first_example=lo)


class PrimaryStates:
    """One primary teacher's unpadded states, read as flat slices with ``os.preadv``.

    ``read(index)`` returns the rows of a batch as one flat buffer plus the
    lengths; padding happens on the training device (``mtd_cache.ragged``):
    padding on the CPU costs more than the read itself (STORAGE.md).
    """

    def __init__(self, path: Path, attrs: dict[str, Any], lengths: np.ndarray, hidden_offsets: np.ndarray,
                 hidden: _Extent, attn_offsets: np.ndarray | None, attn: _Extent | None):
        self.path, self.attrs, self.lengths = path, attrs, lengths
        self.hidden_offsets, self.attn_offsets = hidden_offsets, attn_offsets
        self._hidden, self._attn, self._fd = hidden, attn, None
        self.hidden_layers = tuple(int(x) for x in attrs["hidden_layers"])
        self.attn_layers = tuple(int(x) for x in attrs.get("attn_layers", ()))
        self.hidden_size, self.num_heads = int(attrs["hidden_size"]), int(attrs.get("num_heads", 0))

    @classmethod
    def from_group(cls, path: Path, g: h5py.Group, file_size: int) -> "PrimaryStates":
        attrs = {k: _py(v) for k, v in g.attrs.items()}
        hidden = _extent(g["hidden"], file_size)
        attn = _extent(g["attn"], file_size) if "attn" in g else None
        if hidden is None or ("attn" in g and attn is None):
            raise StoreError(f"{path}: {g.name} must be contiguous and uncompressed (written by mtd-cache)")
        return cls(path, attrs, g["lengths"][...], g["hidden_offsets"][...], hidden,
                   g["attn_offsets"][...] if "attn" in g else None, attn)

    def describe(self) -> dict[str, Any]:
        return {"hidden_layers": list(self.hidden_layers), "attn_layers": list(self.attn_layers),
                "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "attn_pre_softmax": bool(self.attrs.get("attn_pre_softmax", True)),
                "mean_length": float(self.lengths.mean()) if len(self.lengths) else 0.0,
                "bytes": self._hidden.nbytes + (self._attn.nbytes if self._attn else 0)}

    def _file(self) -> int:
        if self._fd is None:  # opened lazily: each process (or DataLoader worker) gets its own
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def read(self, index: Sequence[int]) -> "RaggedBatch":
        index = np.asarray(index, dtype=np.int64)
        hidden = _gather(self._file(), self._hidden, self.hidden_offsets, index, (self.hidden_size,))
        attn = None
        if self._attn is not None:
            attn = _gather(self._file(), self._attn, self.attn_offsets, index, ())
        return RaggedBatch(self.lengths[index], hidden, attn)

    def iter_batches(self, batches: Iterable[Sequence[int]], depth: int = 3) -> Iterator["RaggedBatch"]:
        """``read`` each batch of indices in a background thread, ``depth`` batches ahead."""
        return prefetch(batches, depth=depth, fn=self.read)


@dataclass
class RaggedBatch:
    """A batch of unpadded states: ``hidden`` (sum rows, H) and flat ``attn``, example by example."""

    lengths: np.ndarray
    hidden: np.ndarray
    attn: np.ndarray | None


def _gather(fd: int, ext: _Extent, offsets: np.ndarray, index: np.ndarray, row_shape: tuple) -> np.ndarray:
    """Read rows ``offsets[i]:offsets[i+1]`` of each example straight into one buffer."""
    starts, stops = offsets[index], offsets[index + 1]
    counts = stops - starts
    out = np.empty((int(counts.sum()), *row_shape), dtype=ext.dtype)
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * ext.dtype.itemsize
    flat = out.reshape(-1).view(np.uint8)
    pos = 0
    for start, n in zip(starts.tolist(), counts.tolist()):
        nbytes = n * row_bytes
        got = os.preadv(fd, [flat[pos:pos + nbytes]], ext.offset + start * row_bytes)
        if got != nbytes:
            raise StoreError(f"short read of primary states ({got} of {nbytes} bytes): the store is truncated")
        pos += nbytes
    return out


def _reopen(path: str, fingerprint: str) -> TeacherStore:
    return TeacherStore.open(path, expect_fingerprint=fingerprint, check_finite=False)


def _refuse_unfinished(path: Path) -> None:
    if path.name.endswith(".partial") or (not path.exists() and partial_dir(path).exists()):
        target = path.with_name(path.name.removesuffix(".partial")) if path.name.endswith(".partial") else path
        raise StoreError(f"{target} is an unfinished dump (its progress is in {partial_dir(target)}): "
                         "run the dump again to resume and finish it")
    if not path.exists():
        raise StoreError(f"no store at {path}")
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a store file")


def _check_identity(path: Path, attrs: dict[str, Any]) -> None:
    if attrs.get(ATTR_FORMAT) != FORMAT:
        raise StoreError(f"{path} is not an mtd-cache store (format attribute {attrs.get(ATTR_FORMAT)!r}, "
                         f"expected {FORMAT!r})")
    if attrs.get(ATTR_VERSION) != VERSION:
        raise StoreError(f"{path} has store version {attrs.get(ATTR_VERSION)!r}; this mtd-cache reads version {VERSION}")
    if "spec_json" not in attrs:
        raise StoreError(f"{path} lacks its spec attribute: not written by a complete dump")


def _py(v: Any) -> Any:
    """h5py attribute values as plain Python (bytes -> str, arrays -> lists)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return [_py(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160]
