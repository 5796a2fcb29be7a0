"""Datasets read straight from the file: byte extents, memory maps, and a primary teacher's unpadded states.

Every large dataset of a store is contiguous and uncompressed (the writer makes it so), so its bytes
can be mapped (``map_dataset``: the logits, shared by every process through the page cache) or read
with ``os.preadv`` straight into one buffer per batch (``PrimaryStates.read``: ragged states).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.errors import StoreError
from ..core.prefetch import prefetch
from .integrity import CHECKSUM, hash_extent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Extent:
    """Where a contiguous, uncompressed dataset's bytes lie in the file."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def extent(ds: h5py.Dataset, file_size: int) -> _Extent | None:
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


def map_dataset(path: Path, ds: h5py.Dataset, file_size: int) -> np.ndarray:
    """A read-only view of a dataset: memory-mapped when contiguous (one copy per machine)."""
    ext = extent(ds, file_size)
    if ext is None:
        return ds[...]
    if ext.nbytes == 0:
        return np.zeros(ext.shape, ext.dtype)
    return np.memmap(path, dtype=ext.dtype, mode="r", offset=ext.offset, shape=ext.shape)


class PrimaryStates:
    """One primary teacher's unpadded states, read as flat slices with ``os.preadv``.

    ``read(index)`` returns the rows of a batch as one flat buffer plus the
    lengths; padding happens on the training device (``mtd_cache.core.ragged``):
    padding on the CPU costs more than the read itself (``core/ragged.py``).
    """

    def __init__(self, path: Path, attrs: dict[str, Any], lengths: np.ndarray, hidden_offsets: np.ndarray,
                 hidden: _Extent, attn_offsets: np.ndarray | None, attn: _Extent | None,
                 checksums: dict[str, str | None] | None = None, name: str = "primary"):
        self.path, self.attrs, self.lengths, self.name = path, attrs, lengths, name
        self.hidden_offsets, self.attn_offsets = hidden_offsets, attn_offsets
        self._hidden, self._attn, self._fd = hidden, attn, None
        self._checksums = checksums or {}
        self.hidden_layers = tuple(int(x) for x in attrs["hidden_layers"])
        self.attn_layers = tuple(int(x) for x in attrs.get("attn_layers", ()))
        self.hidden_size, self.num_heads = int(attrs["hidden_size"]), int(attrs.get("num_heads", 0))

    @classmethod
    def from_group(cls, path: Path, g: h5py.Group, file_size: int) -> PrimaryStates:
        attrs = {k: _py(v) for k, v in g.attrs.items()}
        hidden = extent(g["hidden"], file_size)
        attn = extent(g["attn"], file_size) if "attn" in g else None
        if hidden is None or ("attn" in g and attn is None):
            raise StoreError(f"{path}: {g.name} must be contiguous and uncompressed (written by mtd-cache)")
        checksums = {n: _py(g[n].attrs.get(CHECKSUM)) for n in ("hidden", "attn") if n in g}
        return cls(path, attrs, g["lengths"][...], g["hidden_offsets"][...], hidden,
                   g["attn_offsets"][...] if "attn" in g else None, attn, checksums, g.name.lstrip("/"))

    def verify(self) -> None:
        """The states' bytes against their recorded checksums, and finite (a StoreError naming the dataset): read
        once, sequentially, in blocks (about a second per 1.5 GB on this project's machines)."""
        parts = [("hidden", self._hidden)] + [("attn", self._attn)] * (self._attn is not None)
        total = sum(ext.nbytes for _, ext in parts)
        if total > 1 << 28:
            log.info("verifying %s of %s (%s, once per file version)", self.name, self.path, f"{total / 1e9:.1f} GB")
        for part, ext in parts:
            digest, bad = hash_extent(self._file(), ext.offset, ext.nbytes, ext.dtype, finite=True)
            want, name = self._checksums.get(part), f"{self.name}/{part}"
            if want is not None and digest != want:
                raise StoreError(f"{self.path}: the dataset {name} does not match its checksum (sha256 {digest[:12]}, "
                                 f"recorded {want[:12]}): the file was changed or damaged since it was written")
            if bad is not None:
                raise StoreError(f"{self.path}: the dataset {name} holds a non-finite value at element {bad:,}")

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

    def read(self, index: Sequence[int]) -> RaggedBatch:
        index = np.asarray(index, dtype=np.int64)
        hidden = _gather(self._file(), self._hidden, self.hidden_offsets, index, (self.hidden_size,))
        attn = None
        if self._attn is not None:
            attn = _gather(self._file(), self._attn, self.attn_offsets, index, ())
        return RaggedBatch(self.lengths[index], hidden, attn)

    def iter_batches(self, batches: Iterable[Sequence[int]], depth: int = 3) -> Iterator[RaggedBatch]:
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
    for start, n in zip(starts.tolist(), counts.tolist(), strict=True):
        nbytes = n * row_bytes
        got = os.preadv(fd, [flat[pos:pos + nbytes]], ext.offset + start * row_bytes)
        if got != nbytes:
            raise StoreError(f"short read of primary states ({got} of {nbytes} bytes): the store is truncated")
        pos += nbytes
    return out


def _py(v: Any) -> Any:
    """h5py attribute values as plain Python (bytes -> str, arrays -> lists)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return [_py(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v
