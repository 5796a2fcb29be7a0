"""User-facing errors and the exit statuses of every command.

The library raises these; the command-line layer prints the message on one
line (no traceback) and exits with the error's status. Messages name the bad value.

Exit statuses (README "Exit statuses"): 0 done; 1 an unexpected error (a bug: a traceback);
2 bad input (a bad value or path, a read-only or missing folder, a store that does not match);
3 a resource fault (disk full, quota exceeded, an I/O error, out of memory): the work done so
far is kept, and the same command resumes it once the resource is there; 4 a sweep ended with runs
not done (a run failed: the sweep names it, the others are done); 130 interrupted.
"""

from __future__ import annotations

import errno

EXIT_BAD_INPUT = 2
EXIT_RESOURCE = 3
EXIT_INCOMPLETE = 4  # a sweep ended with runs not done (failed): it names them
EXIT_INTERRUPTED = 130

# errnos that say the machine ran out of something, not that the user asked for something wrong
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                             errno.EFBIG})
_FULL_WORDS = ("no space left", "errno = 28", "[errno 28]", "disk quota", "errno = 122", "file write failed")


class MtdError(Exception):
    """A problem with the user's input or files, reported as one line, exit status 2."""

    exit_code = EXIT_BAD_INPUT


class StoreError(MtdError):
    """A teacher store that is missing, incomplete, corrupt or does not match."""


class ResourceError(MtdError):
    """The machine ran out of something (disk, quota, memory) or an I/O error: one line, exit status 3."""

    exit_code = EXIT_RESOURCE


def is_resource_fault(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or a library's error wrapping one) says disk full, quota or I/O error."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        return True
    text = str(exc).lower()
    return any(w in text for w in _FULL_WORDS)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path, the cause, and what to do."""
    where = exc.filename if exc.filename is not None else "(no path given)"
    cause = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some space, then run the same command again: it resumes",
            errno.EDQUOT: "the disk quota is used up: free some, then run the same command again",
            errno.EROFS: "the file system is read-only: choose a writable folder (--out)",
            errno.EACCES: "no permission: choose a folder you can write (--out), or fix its permissions",
            errno.EPERM: "not permitted: choose another folder (--out)"}.get(exc.errno or -1)
    return f"{where}: {cause}" + (f" ({hint})" if hint else "")
