"""Hashing and canonical JSON: equal objects give equal strings, and so equal ids (run ids, experiments, stage 1s)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .safe_files import json_default, open_regular


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:  # a FIFO is refused, never waited on
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
