"""Verified-markers: a store's bytes hashed once per file version, not once per process.

A sweep runs hundreds of processes (Slurm jobs, pool workers) on one store, which may hold 150 GB of
primary states: each hashing it would cost more than training. The first process to verify a part of
a sealed store (``base``: the logits and every small dataset; ``primary/<t>``: a primary's states)
leaves a marker, and later processes that find a valid one skip the hashing. The seal itself is still
checked at every open.

A marker is keyed by the store's real path, inode, size, modification time and *change time*, the part,
and the store's ``seal_sha256``. Any write to the file, a ``touch``, a rename over it or a copy changes
the change time, which no unprivileged process can set back: a changed store never matches a marker.

Threat model. Markers live in the user's own cache (``$MTD_VERIFIED_DIR``, else
``$XDG_CACHE_HOME/mtd-cache/verified``, else ``~/.cache/mtd-cache/verified``), never beside the store:
whoever can write a store's folder (a shared cache) could write a marker there for a store they
altered. A marker is trusted only in a folder owned by this user that no one else can write (checked
at every use; otherwise none is read or written and every process verifies), only from a regular
file owned by this user (not a link), and only when every field of its content matches the store as
it is now. So a marker never makes an unverified store pass: it can only be made by this code, for
this user, after this exact file version passed its checks. Two users on one store each verify it
once. A process that can write the store while a student reads it can change what trains after any
check; that is outside what a checksum can guard.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ..core.errors import MtdError
from ..core.hashing import canonical_json, sha256_text
from ..core.safe_files import open_fd

log = logging.getLogger(__name__)


def marker_dir() -> Path:
    if os.environ.get("MTD_VERIFIED_DIR"):
        return Path(os.environ["MTD_VERIFIED_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mtd-cache" / "verified"


def file_version(path: Path) -> dict[str, int | str]:
    """What identifies this version of the file (a change of any byte or of the inode changes one of them)."""
    st = os.stat(path)
    return {"path": str(path.resolve()), "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def _key(version: dict, seal: str, part: str) -> dict:
    return {**version, "seal_sha256": seal, "part": part}


def is_verified(version: dict, seal: str, part: str) -> bool:
    """Whether this user verified ``part`` of this exact file version with this seal before."""
    folder = _trusted(create=False)
    if folder is None:
        return False
    key = _key(version, seal, part)
    try:
        fd = open_fd(folder / _name(key), os.O_RDONLY)
    except (OSError, MtdError):  # none, or a link or FIFO: not a marker
        return False
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_uid != os.geteuid():
            return False
        try:
            got = json.loads(f.read(1 << 16))
        except ValueError:
            return False
    return isinstance(got, dict) and {k: got.get(k) for k in key} == key


def mark_verified(version: dict, seal: str, part: str) -> None:
    """Record that ``part`` of this file version passed; silently nothing where no trusted folder can be had."""
    folder = _trusted(create=True)
    if folder is None:
        return
    key = _key(version, seal, part)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".marker.", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(canonical_json({**key, "verified_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        os.replace(tmp, folder / _name(key))
    except OSError as exc:  # a full or read-only home: the next process verifies again
        log.debug("no verified-marker written in %s: %s", folder, exc)


def _name(key: dict) -> str:
    return sha256_text(canonical_json(key))[:40] + ".json"


def _trusted(create: bool) -> Path | None:
    """The marker folder when it is this user's alone (made so when ``create``), else None."""
    folder = marker_dir()
    try:
        if create and not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
        st = os.lstat(folder)
    except OSError:
        return None
    mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not mine:
        log.debug("not using verified-markers in %s: not a folder of this user's alone", folder)
    return folder if mine else None
