"""Files the tool writes and reads: never through a symbolic link, never a FIFO or a device.

A runs folder, a teachers folder or a cache is what people share. A symbolic link planted in one where
mtd-cache writes (``<run_id>.lock -> ~/.bashrc``) would make a command overwrite or append to the file
it points to; a FIFO planted where it reads would make it hang. So every file the tool creates or
appends to goes through here (``atomic_path`` (a fresh temporary file beside the target,
renamed over it) included), and every one refuses a link in place of the file (and of the folders the tool names itself
under a folder the user gave: ``<task>/<student>/``, ``seed<i>/``, ``NAME.h5.partial/``): one line, exit
status 2, the link and its target untouched. Paths the user gives (``--out``, ``--store``) may pass
through links: only the last component, the file itself, is checked.

Threat model: links and special files planted *before* a command runs, by whoever wrote the shared
folder. A process of the same user racing the command in the same folder could change its files
anyway; against another user, ``O_NOFOLLOW`` and ``O_EXCL`` make the opens here race-free, and a
checked rename replaces a link rather than writing through it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import MtdError


class UnsafePath(MtdError, OSError):
    """A symbolic link (or another non-regular file) where the tool would write or read a file: exit status 2; an
    ``OSError`` too, so that code reading optional files (``except OSError``) treats it as unreadable."""


def refuse_link(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse a symbolic link at ``path`` (the tool would write through it); nothing at all is fine."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafePath(f"{path} is a symbolic link (to {os.readlink(path)}), where mtd-cache writes a {what}: it "
                         "never writes through a link; remove the link (its target is untouched)")


def check_target(path: str | os.PathLike, what: str = "file") -> None:
    """Before any work: ``path``, where the tool will write a ``what``, is not a link nor a special file."""
    refuse_link(path, what)
    try:
        kind = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISDIR(kind) if what == "folder" else stat.S_ISREG(kind)):
        raise UnsafePath(f"{path} is {_kind(kind)}, where mtd-cache writes a {what}: remove it")


def check_targets(root: str | os.PathLike, paths: list) -> None:
    """``check_target`` for each of ``paths`` (None skipped), and no link at any folder between ``root`` and it."""
    for path in paths:
        if path is not None:
            refuse_links_below(root, path)
            check_target(path)


def refuse_links_below(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuse a link at any component of ``path`` below ``root``: the folders the tool names itself.

    ``root`` (a folder the user gave) may itself be or pass through a link.
    """
    root, path = Path(root), Path(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return
    here = root
    for part in parts:
        here = here / part
        refuse_link(here, "folder" if here != path else "file")


def make_dirs(path: str | os.PathLike, below: str | os.PathLike | None = None) -> Path:
    """``mkdir -p path``, refusing a link at ``path`` (and at every component below ``below``)."""
    path = Path(path)
    if below is not None:
        refuse_links_below(below, path)
    refuse_link(path, "folder")
    path.mkdir(parents=True, exist_ok=True)
    refuse_link(path, "folder")  # made by another process meanwhile: still not a link
    return path


def open_fd(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a link at ``path`` and anything but a regular file (a FIFO would block)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and Path(path).is_symlink():
            refuse_link(path)
        raise
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise UnsafePath(f"{path} is {_kind(kind)}, not a regular file: mtd-cache reads and writes regular "
                             "files only; remove it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line with one ``write`` (``O_APPEND``: whole lines, never interleaved between processes)."""
    fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def create_new(path: str | os.PathLike) -> None:
    """Create an empty file at ``path`` that did not exist (``O_EXCL``: a link there is never followed)."""
    os.close(open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))


def save_into(folder: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a fresh folder beside ``folder``, then rename each file it wrote into ``folder``.

    For writers that open their own files (``save_pretrained``): they would follow a link planted at
    ``config.json``; a fresh folder holds none, and each rename is checked (``refuse_link``).
    """
    folder = make_dirs(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".save.", dir=folder))
    try:
        write(tmp)
        for src in sorted(tmp.iterdir()):
            if src.is_dir() or src.is_symlink():
                raise UnsafePath(f"{src}: a writer left a folder or link where files were expected")
            refuse_link(folder / src.name)
            os.replace(src, folder / src.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open an input for reading, following links (inputs may be links) but refusing a FIFO, device or folder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise UnsafePath(f"{path} is a folder, not a regular file") from None
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise UnsafePath(f"{path} is {_kind(kind)}, not a regular file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (a FIFO or device is refused, never waited on)."""
    with open_regular(path) as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


# ----------------------------------------------------------------------------- atomic writes


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


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, sort_keys=True, default=json_default) + "\n"
    atomic_write_bytes(target, text.encode())


def not_utf8(path: str | os.PathLike) -> MtdError:
    """One line naming the file, line and column of the first byte of ``path`` that is not UTF-8 (a text file saved
    in another encoding): the error a reader raises when decoding fails, instead of a traceback."""
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


def json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
