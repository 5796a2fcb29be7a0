"""Exclusive locks on files, that say who holds them.

``flock`` locks are released by the kernel when their process dies, however it dies, so a lock whose
owner is gone is simply free. The lock file holds its owner (pid, host, start time), written once the
lock is taken, so a refusal can name the process that holds it. A lock file is removed by its holder
when it leaves (``file_lock``), and a process that locked a file no longer at the path starts over.
A symbolic link (or a FIFO) planted at a lock's path is refused, never opened (``safe_files``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .safe_files import open_fd


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields False when ``wait`` is off and another process holds it.

    The lock file exists only while held: its holder removes it on leaving. A process that opened the
    file before its removal and locks it afterwards finds that the path no longer names the file it
    locked, and starts over, so two processes never both believe they hold the lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with os.fdopen(open_fd(path, os.O_RDWR | os.O_CREAT), "r+") as f:  # never through a planted link
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            if not _same_file(f, path):
                continue  # removed (and perhaps re-created) by its last holder: lock the file at the path now
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
            f.flush()
            try:
                yield True
            finally:
                path.unlink(missing_ok=True)  # still holding it: see above
            return


def _same_file(f: Any, path: Path) -> bool:
    try:
        return os.fstat(f.fileno()).st_ino == os.lstat(path).st_ino
    except FileNotFoundError:
        return False


def lock_owner(path: Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock at ``path``: {"pid", "host", "since"}, or None."""
    try:
        return json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


def describe_owner(path: Path) -> str:
    owner = lock_owner(path)
    if not owner:
        return "another process"
    age = time.time() - float(owner.get("since", time.time()))
    return f"process {owner.get('pid')} on {owner.get('host')} (for {age:.0f} s)"
