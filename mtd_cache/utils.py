"""Small shared helpers: atomic files, canonical JSON, hashing, option merging, background prefetch."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .errors import MtdError
from .safe_files import open_regular, refuse_link

T = TypeVar("T")
_INT = re.compile(r"^[0-9]+$")  # ASCII digits only: int() also takes other scripts' digits


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX needs the directory fsynced too)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over ``target``.

    On any exception the temporary file is removed, so ``target`` either keeps its
    old content or gets the complete new one: never a half-written file. A symbolic link at ``target``
    is refused (``safe_files``): the rename would replace the link, but a link where the tool writes
    was planted, and is named rather than silently dropped.
    """
    target = Path(target)
    refuse_link(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    except OSError as exc:
        if exc.filename is None:  # a write into an open file names no path: name the file being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def human_bytes(n: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 kB``: decimal units, two or three significant digits."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, sort_keys=True, default=_json_default) + "\n"
    atomic_write_bytes(target, text.encode())


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:  # a FIFO is refused, never waited on
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def not_utf8(path: str | os.PathLike) -> MtdError:
    """One line naming the file, line and column of the first byte of ``path`` that is not UTF-8 (a text file saved
    in another encoding): the error a reader raises when decoding fails, instead of a traceback."""
    from .safe_files import read_bytes

    data = read_bytes(path)
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        data[bom:].decode("utf-8")
        return MtdError(f"{path}: not UTF-8 text")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line, column = data.count(b"\n", 0, at) + 1, at - data.rfind(b"\n", 0, at)
        return MtdError(f"{path}:{line}: byte 0x{data[at]:02x} at column {column} is not UTF-8 text (save the file "
                        "as UTF-8)")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 3, fn: Callable[[Any], T] | None = None) -> Iterator[T]:
    """Iterate ``fn(item)`` computed ``depth`` items ahead in a background thread.

    Used for store reads (``os.preadv`` releases the GIL, so the read overlaps the
    training step). Exceptions in the thread are re-raised in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(fn(item) if fn is not None else item)
        except BaseException as exc:  # handed to the consumer
            q.put(_Raised(exc))
        q.put(_DONE)

    thread = threading.Thread(target=work, daemon=True, name="mtd-prefetch")
    thread.start()
    try:
        while (got := q.get()) is not _DONE:
            if isinstance(got, _Raised):
                raise got.exc
            yield got
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def parse_index_set(text: str, option: str = "--teachers", bound: int | None = None,
                    what: str = "the store has {n} teachers", max_count: int = 100_000) -> tuple[int, ...]:
    """Parse ``"0,2,5"``, ``"0-5"`` or ``"0-2,4"`` into a sorted tuple of distinct indices.

    Raises MtdError naming the bad token: an empty set or item, a negative index, a malformed or
    descending range, a duplicate index, an index at or past ``bound`` (``what`` says whose count),
    more than ``max_count`` indices. Every range is checked before it is expanded, so the work is
    linear in the text (``0-99999999999`` is refused at once, not enumerated).
    """
    if not text or not text.strip():
        raise MtdError(f"{option}: empty set of indices")
    ranges = [_parse_token(t.strip(), text, option) for t in text.split(",")]
    for r in ranges:
        if bound is not None and r.stop > bound:
            raise MtdError(f"{option}: index {r.stop - 1} out of range: {what.format(n=bound)} "
                           f"({'0-' + str(bound - 1) if bound else 'none'})")
    count = sum(len(r) for r in ranges)
    if count > max_count:
        raise MtdError(f"{option}: {text!r} names {count:,} indices; at most {max_count:,}")
    seen: set[int] = set()
    for r in ranges:
        for index in r:
            if index in seen:
                raise MtdError(f"{option}: duplicate index {index} in {text!r}")
            seen.add(index)
    return tuple(sorted(seen))


def _parse_token(token: str, text: str, option: str) -> range:
    """One comma-separated item: an index or an ascending range ``a-b``."""
    if not token:
        raise MtdError(f"{option}: empty item in {text!r}")
    if token.startswith("-") and _INT.match(token[1:]):
        raise MtdError(f"{option}: negative index {token!r}")
    if _INT.match(token):
        return range(int(token), int(token) + 1)
    lo, sep, hi = (part.strip() for part in token.partition("-"))
    if not (sep and _INT.match(lo) and _INT.match(hi)):
        raise MtdError(f"{option}: malformed index or range {token!r} (expected e.g. 0,2,5 or 0-5)")
    if int(lo) > int(hi):
        raise MtdError(f"{option}: descending range {token!r} (write {hi}-{lo})")
    return range(int(lo), int(hi) + 1)


def slug(name: str) -> str:
    """``name`` as one safe path component (its runs' folder): unchanged when it is one already (``resnet20``,
    ``distilbert``), else the family, the last part of the name and a hash of the whole
    (``tv:resnet18@DEFAULT`` -> ``tv_resnet18@DEFAULT_1a2b3c4d``, ``hf:/models/mini-3l`` -> ``hf_mini-3l_...``)."""
    name = str(name)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", name):
        return name
    head, _, rest = name.partition(":") if name.startswith(("hf:", "tv:")) else ("model", "", name)
    tail = re.sub(r"[^A-Za-z0-9._@-]+", "_", rest.rstrip("/").rsplit("/", 1)[-1]).strip("._")[-40:] or "model"
    return f"{head}_{tail}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
