"""What ``TeacherStore.open`` checks, each failure one line naming the file and what is wrong.

In order: the path is a finished store; the file is an mtd-cache store of version 1 with every
required attribute; every dataset the spec implies is there, of the spec's shape; the attributes
agree with the data (``num_labels`` and ``label_names`` with the logits' classes, labels within
range); then, once per process and file version (it reads every logit), the logits and dev logits
are finite and every dataset with a recorded checksum hashes to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
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
        raise StoreError(f"no store at {path}")
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a store file")


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


def scan(store: Any, checksums: dict[str, str]) -> None:
    """Finite logits and dev logits; every dataset read here against its recorded checksum."""
    z, path = store.logits, store.path
    digest = Checksum()
    for lo in range(0, z.shape[0], SCAN_ROWS):
        rows = np.asarray(z[lo:lo + SCAN_ROWS])
        check_finite_logits(rows, f"{path}", first_example=lo)
        digest.update(rows)
    _compare(path, LOGITS, checksums, digest.hexdigest())
    if store.dev_logits is not None:
        check_finite_logits(store.dev_logits, f"{path} {DEV_LOGITS}")
    for name, values in store._arrays.items():
        if name != LOGITS:
            _compare(path, name, checksums, checksum_of(values))


def _compare(path: Path, name: str, checksums: dict[str, str], got: str) -> None:
    want = checksums.get(name)
    if want is not None and want != got:
        raise StoreError(f"{path}: the dataset {name} does not match its checksum (sha256 {got[:12]}, recorded "
                         f"{want[:12]}): the file was changed or damaged since it was written")
