"""What ``TeacherStore.open`` checks, each failure one line naming the file and what is wrong.

In order: the path is a finished store; the file is an mtd-cache store of version 1 with every
required attribute; every dataset the spec implies is there, of the spec's shape; the attributes
agree with the data (``num_labels`` and ``label_names`` with the logits' classes, labels within
range); then, once per process and file version (it reads every logit), the logits and dev logits
are finite and every dataset with a recorded checksum hashes to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.errors import StoreError
from .format import (
    ATTR_FINGERPRINT,
    ATTR_FORMAT,
    ATTR_VERSION,
    DEV_LABEL,
    DEV_LOGITS,
    DEV_METRIC,
    FORMAT,
    LABEL,
    LOGITS,
    PRIMARY,
    SOURCE,
    VERSION,
    VIEWS,
    StoreSpec,
    check_finite_logits,
    partial_dir,
)
from .integrity import Checksum, checksum_of

REQUIRED_ATTRS = ("task", "metric", "num_labels", "label_names", ATTR_FINGERPRINT, "spec_json")
SCAN_ROWS = 1 << 16  # logits rows per read while scanning: bounded memory


def refuse_unfinished(path: Path) -> None:
    if path.name.endswith(".partial") or (not path.exists() and partial_dir(path).exists()):
        target = path.with_name(path.name.removesuffix(".partial")) if path.name.endswith(".partial") else path
        raise StoreError(f"{target} is an unfinished dump (its progress is in {partial_dir(target)}): "
                         "run the dump again to resume and finish it")
    if not path.exists():
        raise StoreError(f"no store at {path} (write one with mtd-cache dump, or mtd-cache import)")
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a store file")
    if not path.is_file():  # a FIFO or a device: HDF5 would wait on it
        raise StoreError(f"{path} is not a regular file, not a store file")


def check_identity(path: Path, attrs: dict[str, Any]) -> None:
    if attrs.get(ATTR_FORMAT) != FORMAT:
        raise StoreError(f"{path} is not an mtd-cache store (format attribute {attrs.get(ATTR_FORMAT)!r}, "
                         f"expected {FORMAT!r})")
    if attrs.get(ATTR_VERSION) != VERSION:
        raise StoreError(f"{path} has store version {attrs.get(ATTR_VERSION)!r}; "
                         f"this mtd-cache reads version {VERSION}")
    if "spec_json" not in attrs:
        raise StoreError(f"{path} lacks its spec attribute: not written by a complete dump")
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise StoreError(f"{path} lacks the attribute {missing[0]!r}: not a complete mtd-cache store")


def parse_spec(path: Path, attrs: dict[str, Any]) -> StoreSpec:
    """The spec the dump recorded, and the root attributes that repeat it agreeing with it (an edit of one names
    it, in a store without a seal too)."""
    try:
        spec = StoreSpec.from_json(json.loads(attrs["spec_json"]))
        spec.validate()
    except (ValueError, TypeError, AttributeError, KeyError, StoreError) as exc:
        raise StoreError(f"{path}: its spec_json attribute is not a store spec ({' '.join(str(exc).split())[:100]}): "
                         "the file was edited or damaged") from None
    want = {"task": spec.task, "metric": spec.metric, "label_names": list(spec.label_names),
            "num_labels": spec.num_labels, ATTR_FINGERPRINT: spec.fingerprint, "teacher_model": spec.teacher_model,
            "teacher_seeds": list(spec.teacher_seeds), "teacher_paths": list(spec.teacher_paths),
            "teachers_sha256": list(spec.teachers_sha256), "precision": spec.precision}
    for name, value in want.items():
        have = attrs.get(name)
        if have is not None and (list(have) if isinstance(have, (list, tuple)) else have) != value:
            raise StoreError(f"{path}: the {name} attribute ({_short(have)}) disagrees with the spec the dump recorded "
                             f"({_short(value)}): the file was edited or damaged")
    return spec


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def primary_groups(path: Path, f: h5py.File) -> list[tuple[int, h5py.Group]]:
    """The ``primary/<t>`` groups, each with every dataset a reader needs."""
    out = []
    for name, g in f.get(PRIMARY, {}).items():
        if not name.isdigit() or not isinstance(g, h5py.Group):
            raise StoreError(f"{path}: {PRIMARY}/{name} is not a primary teacher's group")
        need = ["lengths", "hidden", "hidden_offsets"] + ["attn_offsets"] * ("attn" in g)
        missing = [n for n in need if n not in g]
        if missing:
            raise StoreError(f"{path} lacks the dataset '{PRIMARY}/{name}/{missing[0]}': not a complete store")
        out.append((int(name), g))
    return out


def small_datasets(f: h5py.File) -> list[str]:
    """Every dataset read whole into memory at open (all but the logits and the primaries' states)."""
    names = [n for n in (LABEL, SOURCE, VIEWS, DEV_METRIC, DEV_LOGITS, DEV_LABEL) if n in f]
    for t, g in f.get(PRIMARY, {}).items():
        names += [f"{PRIMARY}/{t}/{n}" for n in ("lengths", "hidden_offsets", "attn_offsets") if n in g]
    return names


def check_required(path: Path, f: h5py.File, spec: StoreSpec) -> None:
    """Every dataset the spec implies is in the file."""
    required = [LOGITS, LABEL, SOURCE, DEV_METRIC] + [VIEWS] * bool(spec.num_views) + \
        [DEV_LOGITS, DEV_LABEL] * bool(spec.num_dev)
    missing = [n for n in required if n not in f]
    if missing:
        raise StoreError(f"{path} lacks the dataset {missing[0]!r}: not a complete mtd-cache store")


def check_shapes(store: Any) -> None:
    s, path = store.spec, store.path
    checks = [(LOGITS, store.logits.shape, s.logits_shape()), (LABEL, store.labels.shape, (s.num_examples,)),
              (SOURCE, store.sources.shape, (s.num_examples,)),
              (DEV_METRIC, store.dev_metric.shape, (s.num_teachers,))]
    if s.num_views:
        checks.append((VIEWS, store.views.shape, (s.num_views, 3)))
    if s.num_dev:
        checks.append((DEV_LOGITS, store.dev_logits.shape, (s.num_dev, s.num_teachers, s.num_labels)))
        checks.append((DEV_LABEL, store.dev_labels.shape, (s.num_dev,)))
    for name, got, want in checks:
        if tuple(got) != tuple(want):
            raise StoreError(f"{path}: {name} has shape {tuple(got)}, expected {tuple(want)}")
    for t, p in store._primaries.items():
        if len(p.lengths) != s.num_examples:
            raise StoreError(f"{path}: primary {t} covers {len(p.lengths)} of {s.num_examples} examples")


def check_attributes(store: Any) -> None:
    """The attributes agree with the data: classes, label names, labels within range."""
    a, c, path = store.attrs, store.num_classes, store.path
    if int(a["num_labels"]) != c:
        raise StoreError(f"{path}: the num_labels attribute says {a['num_labels']} classes, the logits have {c}")
    if len(a["label_names"]) != c:
        raise StoreError(f"{path}: label_names has {len(a['label_names'])} names for {c} classes")
    for name, labels in ((LABEL, store.labels), (DEV_LABEL, store.dev_labels)):
        if labels is None or not len(labels):
            continue
        bad = np.flatnonzero((labels < 0) | (labels >= c))
        if len(bad):
            raise StoreError(f"{path}: {name} holds {int(labels[bad[0]])} at example {int(bad[0])}, "
                             f"outside the classes 0..{c - 1}")


def check_primaries(store: Any) -> None:
    """Each primary's lengths and offsets describe its states exactly (a damaged one would read out of bounds,
    or ask for terabytes): one line naming the dataset and the example."""
    path, limit = store.path, store.max_length
    for t, p in store._primaries.items():
        where = f"{PRIMARY}/{t}"
        lengths = p.lengths.astype(np.int64)
        bad = np.flatnonzero((lengths < 1) | (lengths > (limit or np.iinfo(np.int32).max)))
        if len(bad):
            raise StoreError(f"{path}: {where}/lengths holds {int(lengths[bad[0]])} at example {int(bad[0])}, not a "
                             f"token count (1..{limit or 'any'}): the file is damaged")
        _check_offsets(path, where, "hidden", p.hidden_offsets, lengths * len(p.hidden_layers), p._hidden.shape[0])
        if p._attn is not None:
            _check_offsets(path, where, "attn", p.attn_offsets, lengths ** 2 * len(p.attn_layers) * p.num_heads,
                           p._attn.shape[0])


def _check_offsets(path: Path, where: str, kind: str, offsets: np.ndarray, per_example: np.ndarray,
                   total: int) -> None:
    want = np.concatenate([[0], np.cumsum(per_example)])
    offsets, name = np.asarray(offsets), f"{where}/{kind}_offsets"
    if offsets.shape != want.shape:
        raise StoreError(f"{path}: {name} has {len(offsets)} entries for {len(want) - 1} examples")
    bad = np.flatnonzero(offsets != want)
    if len(bad):
        raise StoreError(f"{path}: {name} holds {int(offsets[bad[0]])} at entry {int(bad[0])}, where {where}/lengths "
                         f"puts {int(want[bad[0]])}: one of them is damaged")
    if int(want[-1]) != total:
        raise StoreError(f"{path}: {where}/lengths add up to {int(want[-1])} rows of {where}/{kind}, which has "
                         f"{total}: the file is damaged")


def check_small(store: Any, checksums: dict[str, str]) -> None:
    """Every dataset read whole at open against its recorded checksum (the first open in a process)."""
    arrays = dict(store._arrays)
    for t, p in store._primaries.items():
        arrays[f"{PRIMARY}/{t}/lengths"], arrays[f"{PRIMARY}/{t}/hidden_offsets"] = p.lengths, p.hidden_offsets
        if p.attn_offsets is not None:
            arrays[f"{PRIMARY}/{t}/attn_offsets"] = p.attn_offsets
    for name, values in arrays.items():
        if name != LOGITS:
            _compare(store.path, name, checksums, checksum_of(values))


def scan(store: Any, checksums: dict[str, str]) -> None:
    """Finite logits and dev logits; the logits against their recorded checksum."""
    z, path = store.logits, store.path
    digest = Checksum()
    for lo in range(0, z.shape[0], SCAN_ROWS):
        rows = np.asarray(z[lo:lo + SCAN_ROWS])
        check_finite_logits(rows, f"{path}", first_example=lo)
        digest.update(rows)
    _compare(path, LOGITS, checksums, digest.hexdigest())
    if store.dev_logits is not None:
        check_finite_logits(store.dev_logits, f"{path} {DEV_LOGITS}")


def _compare(path: Path, name: str, checksums: dict[str, str], got: str) -> None:
    want = checksums.get(name)
    if want is not None and want != got:
        raise StoreError(f"{path}: the dataset {name} does not match its checksum (sha256 {got[:12]}, recorded "
                         f"{want[:12]}): the file was changed or damaged since it was written")
