"""Checksums of a store's datasets (additions within format version 1).

Every dataset a dump or an import writes carries the sha256 of its bytes, in row-major order, as its
``sha256`` attribute. The writer hashes each dataset as it writes it and verifies the primary
teachers' states by reading them back before the store is renamed into place; the reader verifies
the logits within the finiteness scan that already reads them on the first open in a process, and
the small datasets on every open; ``mtd-cache inspect --verify`` verifies everything. Stores written
before checksums existed have none: they open as before, and ``--verify`` says so.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

CHECKSUM = "sha256"  # the dataset attribute
VERIFY_ROWS = 1 << 16  # rows per read while verifying: bounded memory
HASH_BLOCK = 64 << 20  # bytes per read while hashing a primary's states


class Checksum:
    """sha256 over arrays fed in row-major order (the bytes of the dataset they form)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, values: np.ndarray) -> Checksum:
        a = np.ascontiguousarray(values)
        self._h.update(memoryview(a).cast("B") if a.size else b"")
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def checksum_of(values: np.ndarray) -> str:
    return Checksum().update(values).hexdigest()


def datasets(f: h5py.File) -> list[str]:
    """Every dataset in the file, by name."""
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def hash_dataset(ds: h5py.Dataset) -> str:
    """sha256 of a dataset's bytes in row-major order, read ``VERIFY_ROWS`` rows at a time."""
    h = Checksum()
    for lo in range(0, max(ds.shape[0] if ds.shape else 1, 1), VERIFY_ROWS):
        h.update(ds[lo:lo + VERIFY_ROWS] if ds.shape else ds[()])
    return h.hexdigest()


def hash_extent(fd: int, offset: int, nbytes: int, dtype: np.dtype, finite: bool = False,
                block: int = HASH_BLOCK) -> tuple[str, int | None]:
    """sha256 of ``nbytes`` at ``offset`` of an open file (a contiguous dataset), read with ``os.preadv`` into one
    reused buffer; with ``finite``, also the first element (of ``dtype``) that is NaN or infinite, else None."""
    h, bad = hashlib.sha256(), None
    buf = np.empty(min(block, max(nbytes, 1)) // dtype.itemsize * dtype.itemsize or dtype.itemsize, np.uint8)
    pos = 0
    while pos < nbytes:
        view = memoryview(buf)[:min(len(buf), nbytes - pos)]
        got = os.preadv(fd, [view], offset + pos)
        if got != len(view):
            raise OSError(f"short read at byte {offset + pos:,}: the file is truncated")
        h.update(view)
        if finite and bad is None:
            wrong = _non_finite(np.frombuffer(view, dtype=dtype))
            bad = pos // dtype.itemsize + int(wrong[0]) if len(wrong) else None
        pos += len(view)
    return h.hexdigest(), bad


def _non_finite(values: np.ndarray) -> np.ndarray:
    """Indices of NaN and infinite values; for float16 (a primary's states) by their exponent bits, all ones:
    three times as fast as ``np.isfinite``, which converts each value first."""
    if values.dtype == np.float16:
        return np.flatnonzero((values.view(np.uint16) & 0x7C00) == 0x7C00)
    return np.flatnonzero(~np.isfinite(values))


def verify_file(path: str | Path, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Hash the datasets ``names`` (default: all) of the file at ``path`` against their recorded checksums.

    Returns ``{"checked": [...], "unrecorded": [...], "bad": [...]}``, each a list of dataset names.
    """
    out: dict[str, list[str]] = {"checked": [], "unrecorded": [], "bad": []}
    with h5py.File(path, "r") as f:
        for name in names if names is not None else datasets(f):
            ds = f[name]
            want = ds.attrs.get(CHECKSUM)
            if want is None:
                out["unrecorded"].append(name)
                continue
            want = want.decode() if isinstance(want, bytes) else str(want)
            (out["checked"] if hash_dataset(ds) == want else out["bad"]).append(name)
    return out
