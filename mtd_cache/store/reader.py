"""Reading a store: validated on open, logits gathered from a shared memory map."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.errors import StoreError
from . import validate
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
    EXTRA_AUGMENTED,
    EXTRA_DATA_DIR,
    EXTRA_IMPORTED,
    EXTRA_MAX_LENGTH,
    EXTRA_NUM_LAYERS,
    EXTRA_TASK_FILE,
    EXTRA_TEST_SUBSET,
    EXTRA_TOKENIZER,
    EXTRA_TRAIN_SUBSET,
    LABEL,
    LOGITS,
    PRIMARY,
    SOURCE,
    VIEWS,
    StoreSpec,
)
from .integrity import CHECKSUM, verify_file
from .seal import check_seal
from .states import PrimaryStates, _py, map_dataset
from .verified import file_version, is_verified, mark_verified

log = logging.getLogger(__name__)

_FINITE_OK: set[tuple] = set()  # file versions (``verified.file_version``) whose logits were checked here
_STATES_OK: set[tuple] = set()  # (file version..., primary) whose states were checked here
_OPENED: dict[tuple, TeacherStore] = {}  # the same key -> the store opened (read-only: safe to share), oldest first
_KEEP_OPENED = 8  # a sweep's R repeat stores and a few more


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
                 primaries: dict[int, PrimaryStates], spec: StoreSpec, seal: str | None = None,
                 version: dict[str, Any] | None = None):
        self.path, self.attrs, self._arrays, self._primaries = path, attrs, arrays, primaries
        self.spec, self.seal_sha256 = spec, seal
        self._version = version  # None: the states are not verified here (a store unpickled in a worker)
        z = np.asarray(arrays[LOGITS])  # plain ndarray view: no memmap subclass overhead
        self._rows = z.reshape(-1, z.shape[-2] * z.shape[-1])  # (N[*V], T*C) rows of the memory map
        self._selections: dict[frozenset, tuple[np.ndarray, int]] = {}

    # opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, expect_fingerprint: str | None = None,
             check_finite: bool = True) -> TeacherStore:
        """Open and check a store: format, seal and shapes at every open; the bytes of its logits and small
        datasets against their checksums (and the logits' finiteness) once per process and file version,
        skipped where a verified-marker says this user checked this file version (``verified.py``); a
        primary's states when first used (``primary``). ``check_finite=False`` (a store unpickled in a
        worker of a process that opened it) skips the bytes."""
        path = Path(path)
        validate.refuse_unfinished(path)
        version = file_version(path)
        stamp = tuple(version.values())
        store = _OPENED.get(stamp) if check_finite else None
        if store is None:
            store = cls._read(path, version, check_finite)
        if expect_fingerprint is not None and expect_fingerprint != store.fingerprint:
            raise StoreError(f"{path} was made from other inputs: store fingerprint {store.fingerprint} "
                             f"!= expected {expect_fingerprint}")
        return store

    @classmethod
    def _read(cls, path: Path, version: dict[str, Any], check_finite: bool) -> TeacherStore:
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise StoreError(f"{path} is not a readable HDF5 store (truncated or not HDF5): {_short(exc)}") from None
        with f:
            attrs = {k: _py(v) for k, v in f.attrs.items()}
            validate.check_identity(path, attrs)
            seal = check_seal(path, f)
            spec = validate.parse_spec(path, attrs)
            validate.check_required(path, f, spec)
            size = version["size"]
            names = [n for n in (LOGITS, LABEL, SOURCE, VIEWS, DEV_METRIC, DEV_LOGITS, DEV_LABEL) if n in f]
            arrays = {n: map_dataset(path, f[n], size) if n == LOGITS else f[n][...] for n in names}
            primaries = {t: PrimaryStates.from_group(path, g, size) for t, g in validate.primary_groups(path, f)}
            checksums = {n: _py(f[n].attrs[CHECKSUM]) for n in [LOGITS, *validate.small_datasets(f)]
                         if CHECKSUM in f[n].attrs}
        store = cls(path, attrs, arrays, primaries, spec, seal, version if check_finite else None)
        stamp = tuple(version.values())
        verify = check_finite and stamp not in _FINITE_OK and not (seal and is_verified(version, seal, "base"))
        if verify:  # first: a damaged small dataset is named as such, not by what it breaks
            validate.check_small(store, checksums)
        validate.check_shapes(store)
        validate.check_attributes(store)
        validate.check_primaries(store)
        if verify:  # a finished store does not change: scan it once per process and file version
            validate.scan(store, checksums)
            if seal:
                mark_verified(version, seal, "base")
        if check_finite:  # validated in full: later opens of this file version in this process reuse it
            _FINITE_OK.add(stamp)
            if len(_OPENED) >= _KEEP_OPENED:
                del _OPENED[next(iter(_OPENED))]
            _OPENED[stamp] = store
        return store

    def __enter__(self) -> TeacherStore:
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

    # where the teachers came from and what the dump recorded: typed, so no other module reads attributes
    # or ``extra`` keys by string (absent ones are empty or None: stores written before they existed).
    teacher_model = property(lambda self: str(self.attrs.get("teacher_model", "")))
    teacher_seeds = property(lambda self: [int(s) for s in self.attrs.get("teacher_seeds", [])])
    teacher_paths = property(lambda self: [str(p) for p in self.attrs.get("teacher_paths", [])])
    teachers_sha256 = property(lambda self: [str(h) for h in self.attrs.get("teachers_sha256", [])])
    precision = property(lambda self: self.attrs.get("precision"))
    dump_wall_s = property(lambda self: _number(self.attrs.get(ATTR_WALL)))
    dump_energy_j = property(lambda self: _number(self.attrs.get(ATTR_ENERGY)))
    # one teacher's inference per (example, view), measured by the dump; None for stores dumped before 0.2
    teacher_forward_s = property(lambda self: _number(self.attrs.get(ATTR_FORWARD_S)))
    teacher_forward_j = property(lambda self: _number(self.attrs.get(ATTR_FORWARD_J)))
    tokenizer = property(lambda self: self.spec.extra.get(EXTRA_TOKENIZER))  # {"name", "sha256"}: text stores
    max_length = property(lambda self: _int(self.spec.extra.get(EXTRA_MAX_LENGTH)))
    data_dir = property(lambda self: self.spec.extra.get(EXTRA_DATA_DIR))
    augmented = property(lambda self: self.spec.extra.get(EXTRA_AUGMENTED))  # {"path", "sha256"} or None
    train_subset = property(lambda self: _int(self.spec.extra.get(EXTRA_TRAIN_SUBSET)))
    test_subset = property(lambda self: _int(self.spec.extra.get(EXTRA_TEST_SUBSET)))
    teacher_depth = property(lambda self: _int(self.spec.extra.get(EXTRA_NUM_LAYERS)))
    imported = property(lambda self: bool(self.spec.extra.get(EXTRA_IMPORTED)))
    task_file = property(lambda self: self.spec.extra.get(EXTRA_TASK_FILE))  # {"path", "content", ...} or None

    # reading ----------------------------------------------------------------------------------
    def mean_logits(self, teachers: Sequence[int], index: Any, view: Any = None,
                    weights: Sequence[float] | None = None) -> np.ndarray:
        """The chosen teachers' raw logits averaged, for a batch: (B, C) float32.

        ``index``: example indices (B,); ``view``: view indices (B,) for image stores. ``weights``: one per
        chosen teacher, in ascending teacher order, >= 0 (normalised here); None: the plain mean.
        The mean is taken over logits, before any temperature or softmax (the paper's eq. 9).
        """
        rows = self._batch_rows(index, view)
        # The sum over the chosen teachers as one small matmul with a 0/1 selection matrix: exact products,
        # a fixed summation order (the same set gives the same bits), and ~2x faster than a strided
        # reduction over the teacher axis (bench/store_read.py). Stores hold finite logits only (the
        # writer refuses others), so the zero weights of unchosen teachers never meet a NaN.
        if weights is not None:
            return rows @ self._weighted(teachers, weights)
        w, k = self._selection(teachers)
        out = rows @ w
        out *= 1.0 / k
        return out

    def mean_logits_many(self, subsets: Sequence[Sequence[int]], index: Any, view: Any = None,
                         weights: Sequence[Sequence[float] | None] | None = None) -> np.ndarray:
        """``mean_logits`` of S teacher subsets for one batch in one read and one matmul: (S, B, C) float32.

        ``subsets[s]``: the chosen teachers of student s; ``weights[s]``: their weights (ascending teacher
        order) or None (the plain mean). Row s holds what ``mean_logits(subsets[s], index, view, weights[s])``
        returns, up to the summation order of the matmul: (B, T*C) @ (T*C, S*C), the S selection matrices side by
        side (a multi-student pack's gather, ``students.pack``)."""
        weights = list(weights) if weights is not None else [None] * len(subsets)
        if len(weights) != len(subsets) or not subsets:
            raise ValueError(f"{len(subsets)} subsets and {len(weights)} weights: one weight list (or None) each")
        rows = self._batch_rows(index, view)
        key = ("many", tuple(tuple(sorted(set(s))) for s in subsets),
               tuple(None if w is None else tuple(map(float, w)) for w in weights))
        hit = self._selections.get(key)
        if hit is None:
            blocks, scale = [], []
            for chosen, w in zip(subsets, weights, strict=True):
                if w is None:
                    m, k = self._selection(chosen)
                    blocks.append(m), scale.append(1.0 / k)
                else:
                    blocks.append(self._weighted(chosen, w)), scale.append(1.0)
            hit = self._selections[key] = (np.ascontiguousarray(np.concatenate(blocks, axis=1)),
                                           np.asarray(scale, dtype=np.float32)[:, None, None])
        matrix, scale = hit
        out = (rows @ matrix).reshape(len(rows), len(subsets), self.num_classes).transpose(1, 0, 2)
        out *= scale  # 1/k after the sum, as mean_logits does
        return np.ascontiguousarray(out)

    def teacher_logits(self, teachers: Sequence[int], index: Any, view: Any = None) -> np.ndarray:
        """Each chosen teacher's raw logits for a batch, (B, k, C) float32, teachers in ascending order."""
        rows = self._batch_rows(index, view)
        chosen = sorted(int(t) for t in set(teachers))
        if not chosen or chosen[0] < 0 or chosen[-1] >= self.num_teachers:
            raise IndexError(f"teachers {chosen} out of range 0..{self.num_teachers - 1}")
        return np.ascontiguousarray(rows.reshape(len(rows), self.num_teachers, self.num_classes)[:, chosen])

    def _batch_rows(self, index: Any, view: Any) -> np.ndarray:
        """(B, T*C) float32: one contiguous row per example (and view) of the batch."""
        if self.num_views:
            if view is None:
                raise StoreError(f"{self.path} has {self.num_views} views per example: pass view=")
            try:  # the row of (example, view) in the flat (N*V, T*C) map; bounds checked in C
                index = np.ravel_multi_index((index, view), (self.num_examples, self.num_views))
            except ValueError as exc:
                raise IndexError(f"example or view index out of range ({self.num_examples} examples, "
                                 f"{self.num_views} views): {exc}") from None
        rows = np.take(self._rows, index, axis=0)
        if rows.dtype != np.float32:
            import torch  # lazily: `mtd-cache inspect` need not load torch
            rows = torch.from_numpy(rows).float().numpy()  # F16C: ~4x faster than numpy's float16 cast
        return rows

    def _weighted(self, teachers: Sequence[int], weights: Sequence[float]) -> np.ndarray:
        """The (T*C, C) matrix that sums the chosen teachers' logits times their normalised weights."""
        chosen = sorted(int(t) for t in set(teachers))
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(chosen),) or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"weights {list(weights)}: one finite weight >= 0 per chosen teacher "
                             f"({len(chosen)}), not all 0")
        key = (tuple(chosen), tuple(w.tolist()))
        hit = self._selections.get(key)
        if hit is None:
            m = self._selection(chosen)[0].reshape(self.num_teachers, self.num_classes, self.num_classes).copy()
            m[chosen] *= (w / w.sum()).astype(np.float32)[:, None, None]
            hit = self._selections[key] = m.reshape(-1, self.num_classes)
        return hit

    def mean_dev_logits(self, teachers: Sequence[int] | None = None) -> np.ndarray | None:
        """The chosen teachers' (default: all) dev logits averaged, (M, C) float32: the ensemble's; None without dev."""
        if self.dev_logits is None:
            return None
        w, k = self._selection(range(self.num_teachers) if teachers is None else teachers)
        z = np.asarray(self.dev_logits, dtype=np.float32)
        out = z.reshape(len(z), -1) @ w
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

    sealed = property(lambda self: self.seal_sha256 is not None)  # False: written before seals, or stripped

    def primary(self, teacher: int) -> PrimaryStates:
        """A primary teacher's states, their bytes checked against their checksums on first use (once per process
        and file version, or where a verified-marker says so)."""
        if teacher not in self._primaries:
            have = ", ".join(map(str, self.primaries)) or "none"
            raise StoreError(f"{self.path} holds no states of primary teacher {teacher} (it has: {have})")
        states = self._primaries[teacher]
        if self._version is not None:
            key, part = (*self._version.values(), teacher), f"{PRIMARY}/{teacher}"
            if key not in _STATES_OK and not (self.sealed and is_verified(self._version, self.seal_sha256, part)):
                states.verify()
                if self.sealed:
                    mark_verified(self._version, self.seal_sha256, part)
            _STATES_OK.add(key)
        return states

    def verify(self) -> dict[str, Any]:
        """Every dataset hashed against its recorded checksum (``mtd-cache inspect --verify``)."""
        return verify_file(self.path)

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
            "fingerprint": self.fingerprint, "seal_sha256": self.seal_sha256, "dump_wall_s": self.dump_wall_s,
            "dump_energy_j": self.dump_energy_j,
            **{k: _number(a.get(k)) for k in (ATTR_FORWARD_S, ATTR_FORWARD_Q25, ATTR_FORWARD_Q75, ATTR_FORWARD_CHUNKS)},
            "extra": self.spec.extra,
        }


def _reopen(path: str, fingerprint: str) -> TeacherStore:
    return TeacherStore.open(path, expect_fingerprint=fingerprint, check_finite=False)


def _number(v: Any) -> float | None:
    """A float attribute, None when absent or NaN (unknown)."""
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160]
