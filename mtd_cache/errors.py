"""User-facing errors.

The library raises these; the command-line layer prints the message on one
line (no traceback) and exits with status 2. Messages name the bad value.
"""


class MtdError(Exception):
    """A problem with the user's input or files, reported as one line, exit status 2."""


class StoreError(MtdError):
    """A teacher store that is missing, incomplete, corrupt or does not match."""
