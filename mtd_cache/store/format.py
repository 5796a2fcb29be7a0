"""Store format constants, the dump spec and the input fingerprint.

The teacher store: one HDF5 file of raw teacher outputs (format in ``docs/FORMAT.md``).

The ``mtd_cache.store`` package is the only code that imports h5py, and this
module names every dataset and attribute once. The design rests on two measured facts:

* Writing: HDF5 writes metadata only at flush/close, so a killed writer leaves
  an unreadable file. The writer therefore puts each finished piece of work in
  a *shard* (``.npz`` written to a temporary name, fsynced, renamed) inside
  ``NAME.h5.partial/``; ``finish()`` merges the shards into contiguous datasets
  of ``NAME.h5.partial/merge.tmp`` and renames it to ``NAME.h5``. A killed dump
  resumes by skipping the shards that exist, and merging is deterministic, so
  the result equals an uninterrupted dump.
* Reading: every large dataset is contiguous and uncompressed, so the reader
  maps it straight from the file (``np.memmap`` at the dataset's byte offset):
  gathers are numpy gathers (h5py fancy indexing is 50-100x slower) and all
  processes on a machine share one copy through the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import StoreError

FORMAT = "mtd-cache"
VERSION = 1

# Datasets.
LABEL = "examples/label"
SOURCE = "examples/source"
LOGITS = "logits"
VIEWS = "views"
DEV_METRIC = "teachers/dev_metric"
DEV_LOGITS = "dev/logits"
DEV_LABEL = "dev/label"
PRIMARY = "primary"  # primary/<t>/{lengths,hidden,hidden_offsets,attn,attn_offsets}

# Root attributes (the spec's fields are written under these names).
ATTR_FORMAT, ATTR_VERSION, ATTR_FINGERPRINT = "format", "version", "fingerprint"
ATTR_WALL, ATTR_ENERGY = "dump_wall_s", "dump_energy_j"
# one teacher's inference per example (per example and view on an image store), measured by the dump: what
# a student that ran its k teachers online would pay per training example seen (the report's online cost);
# absent from stores dumped before it was recorded (their online-equivalent cost is unknown)
ATTR_FORWARD_S, ATTR_FORWARD_J = "teacher_forward_s", "teacher_forward_j"
# how robust the rate is: its quartiles over the dump's chunks, and how many chunks it is the median of
ATTR_FORWARD_Q25, ATTR_FORWARD_Q75, ATTR_FORWARD_CHUNKS = "teacher_forward_s_q25", "teacher_forward_s_q75", \
    "teacher_forward_chunks"
COST_ATTRS = (ATTR_WALL, ATTR_ENERGY, "created_utc", ATTR_FORWARD_S, ATTR_FORWARD_J, ATTR_FORWARD_Q25,
              ATTR_FORWARD_Q75, ATTR_FORWARD_CHUNKS)  # excluded from equality and from the seal
# the seal (``seal.py``): a checksum over every other root attribute, the groups' attributes and the datasets'
# checksums (an addition within version 1; stores written before have none and are refused for training)
ATTR_SEAL_JSON, ATTR_SEAL = "seal_json", "seal_sha256"

# Keys of the spec's ``extra`` (settings a dump records for the students that read the store): named once
# here; other modules read them through ``TeacherStore``'s typed properties and write them through ``extra``.
EXTRA_TOKENIZER = "tokenizer"  # text: {"name", "sha256"} of the teachers' tokenizer
EXTRA_MAX_LENGTH = "max_length"  # text: tokens per example
EXTRA_DATA_DIR = "data_dir"  # where the task's data was read from (null: the default place)
EXTRA_AUGMENTED = "augmented"  # text: {"path", "sha256"} of TinyBERT's augmented training file, or null
EXTRA_TRAIN_SUBSET = "train_subset"  # only the first N training examples were cached
EXTRA_TEST_SUBSET = "test_subset"  # images: teachers and students scored on the first N test images
EXTRA_NUM_LAYERS = "num_layers"  # text: the teachers' depth L_T
EXTRA_IMPORTED = "imported"  # written by ``mtd-cache import``
EXTRA_TASK_FILE = "task_file"  # a task file's task: {"path", "content", "sha256", "resolved"}; null for built-ins

PARTIAL_SUFFIX = ".partial"
MERGE_ROWS = 8192  # examples per merge step: bounded memory whatever N is


@dataclass(frozen=True)
class PrimarySpec:
    """What the store keeps of one primary teacher's intermediate states.

    ``hidden_layers`` are teacher layer indices (0 = embedding output);
    ``attn_layers`` are 1-based transformer layers whose attention is kept
    (pre-softmax scores when ``attn_pre_softmax``).
    """

    hidden_size: int
    hidden_layers: tuple[int, ...]
    attn_layers: tuple[int, ...] = ()
    num_heads: int = 0
    attn_pre_softmax: bool = True


@dataclass(frozen=True)
class StoreSpec:
    """Everything fixed before a dump starts; a resumed dump must present the same spec."""

    task: str
    metric: str
    label_names: tuple[str, ...]
    num_examples: int
    num_teachers: int
    fingerprint: str
    num_dev: int = 0
    num_views: int = 0  # 0: no view axis (text); V > 0: logits are (N, V, T, C)
    logits_dtype: str = "float32"
    teacher_model: str = ""
    teacher_seeds: tuple[int, ...] = ()
    teacher_paths: tuple[str, ...] = ()
    teachers_sha256: tuple[str, ...] = ()
    precision: str = "fp32"
    primaries: dict[int, PrimarySpec] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific attrs (tokenizer, max_length…)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def logits_shape(self) -> tuple[int, ...]:
        view = (self.num_views,) if self.num_views else ()
        return (self.num_examples, *view, self.num_teachers, self.num_labels)

    def estimate_bytes(self, lengths: Any = None) -> int:
        """The bytes of the datasets a dump of this spec writes (HDF5's own metadata, some KB, aside).

        Exact given each example's token count ``lengths`` (needed with primaries): logits,
        labels and sources, dev logits and labels, and per primary ``sum(L_i) * layers * H``
        hidden and ``sum(L_i^2) * layers * heads`` attention float16 values plus offsets.
        """
        n, t, c = self.num_examples, self.num_teachers, self.num_labels
        size = n * max(self.num_views, 1) * t * c * np.dtype(self.logits_dtype).itemsize + n * 8 * 2
        size += self.num_dev * (t * c * 4 + 8) + t * 8 + self.num_views * 3 * 2
        if self.primaries:
            lengths = np.asarray(lengths, dtype=np.int64)
            for p in self.primaries.values():
                size += n * 4 + 2 * (n + 1) * 8  # lengths, both offset tables
                size += int(lengths.sum()) * len(p.hidden_layers) * p.hidden_size * 2
                size += int((lengths ** 2).sum()) * len(p.attn_layers) * p.num_heads * 2
        return int(size)

    def validate(self) -> None:
        t = self.num_teachers
        if self.logits_dtype not in ("float32", "float16"):
            raise StoreError(f"logits dtype {self.logits_dtype!r} is not float32 or float16")
        for name in ("teacher_seeds", "teacher_paths", "teachers_sha256"):
            value = getattr(self, name)
            if value and len(value) != t:
                raise StoreError(f"{name} has {len(value)} entries for {t} teachers")
        for p in self.primaries:
            if not 0 <= p < t:
                raise StoreError(f"primary teacher {p} is outside 0..{t - 1}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["primaries"] = {str(k): asdict(v) for k, v in self.primaries.items()}
        return json.loads(json.dumps(d))  # tuples -> lists, for comparison with a loaded spec

    @classmethod
    def from_json(cls, d: dict) -> StoreSpec:
        d = dict(d)
        prims = {int(k): PrimarySpec(**{n: tuple(x) if isinstance(x, list) else x for n, x in v.items()})
                 for k, v in d.pop("primaries", {}).items()}
        tup = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tup, "primaries": prims})


class Fingerprint:
    """sha256 over the cached inputs in order: name, dtype, shape and bytes of each part.

    The dump and the student compute it the same way from their own inputs
    (pixels or token ids, labels, augmentation ids, tokenizer, max length), so a
    student reading a store made from other inputs is refused.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, name: str, value: Any) -> Fingerprint:
        if isinstance(value, (str, int, float, bool)) or value is None:
            payload = json.dumps(value).encode()
            header = f"{name}|json|"
        else:
            arr = np.ascontiguousarray(np.asarray(value))
            payload = arr.tobytes()
            header = f"{name}|{arr.dtype.str}|{arr.shape}|"
        self._h.update(header.encode())
        self._h.update(len(payload).to_bytes(8, "little"))
        self._h.update(payload)
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def partial_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def check_finite_logits(logits: np.ndarray, what: str = "logits", first_example: int = 0,
                        teacher: int | None = None) -> None:
    """Refuse NaN or Inf logits, naming the teacher and example (axis -2 is the teacher axis).

    With ``teacher``, ``logits`` are that one teacher's (n, C) block (a dump's chunk).
    """
    if teacher is not None:
        logits = np.asarray(logits)[:, None, :]
    bad = ~np.isfinite(logits)
    if bad.any():
        where = np.argwhere(bad)[0]
        view = f", view {int(where[1])}" if logits.ndim == 4 else ""
        who = int(where[-2]) if teacher is None else teacher
        raise StoreError(f"{what}: teacher {who} has a non-finite value ({logits[tuple(where)]}) "
                         f"at example {first_example + int(where[0])}{view}")
