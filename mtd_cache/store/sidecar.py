"""Files beside a finished store: facts measured after it was written, never written into it.

A finished store's attributes are covered by its checksums, so a later measurement goes into a sidecar
file beside it, ``NAME.h5.forward.json``: one teacher inference's seconds (and joules) per (example, view),
re-measured warm on a quieter machine (``mtd-cache inspect --measure-forward``). It names the store's
fingerprint; a sidecar of another store's data is ignored, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..core.safe_files import atomic_write_json

log = logging.getLogger(__name__)

FORWARD_SUFFIX = ".forward.json"


def forward_sidecar(store: str | os.PathLike) -> Path:
    store = Path(store)
    return store.with_name(store.name + FORWARD_SUFFIX)


def write_forward_sidecar(store: str | os.PathLike, fingerprint: str, measured: dict[str, Any]) -> Path:
    """Write the measurement ``measured`` (``teacher_forward_s`` and how it was taken) beside ``store``."""
    path = forward_sidecar(store)
    atomic_write_json(path, {"fingerprint": fingerprint, **measured})
    return path


def read_forward_sidecar(store: str | os.PathLike, fingerprint: str) -> dict[str, Any] | None:
    """The sidecar's measurement with its file name under ``file``, or None (none, unreadable, another store's)."""
    path = forward_sidecar(store)
    if not path.is_file():
        return None
    try:
        got = json.loads(path.read_text())
        rate = float(got["teacher_forward_s"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: not a readable measurement (%s): the dump's rate is used", path, exc)
        return None
    if got.get("fingerprint") != fingerprint or not rate > 0:
        log.warning("%s was measured for another store (or holds no positive rate): the dump's rate is used", path)
        return None
    return {**got, "teacher_forward_s": rate, "file": path.name}
