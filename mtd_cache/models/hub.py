"""Loading Hugging Face checkpoints offline-first: a machine without the Hub fails at once, in one line.

``pretrained(loader, name, what, hint)`` runs a ``from_pretrained``. A name that is not a local folder is
looked up in the Hugging Face cache only (``local_files_only``) when the Hub cannot be reached: ``HF_HUB_OFFLINE``
is set, or one short connection attempt to the Hub failed (asked once per process). The error then names the
setting that takes a local folder (``hint``) instead of a minute of retries. ``quiet_transformers`` keeps
transformers' warnings at error level and, off a terminal, its bars out of the log.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies

from ..core.errors import MtdError

LOCAL_HINT = "give a local folder"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings at error level and, off a terminal, no carriage-return bars (a log stays lines)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_off = are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()  # (which turns the Hub client's bars on as well: put them back)
            if hub_off:
                disable_progress_bars()


def pretrained(loader: Callable[..., Any], name_or_path: Any, what: str, hint: str = LOCAL_HINT,
               **kwargs: Any) -> Any:
    """``loader(name_or_path, **kwargs)`` (a ``from_pretrained``), offline-first: a name that is not a local
    folder is looked up in the Hugging Face cache only when the Hub cannot be reached (``HF_HUB_OFFLINE`` set,
    or one short connection attempt failed), so an offline machine fails at once, in one line, with ``hint``
    (the setting that takes a local folder) instead of a minute of retries."""
    name = str(name_or_path)
    offline = None if Path(name).exists() else hub_unreachable()
    try:
        return loader(name, **kwargs, **({"local_files_only": True} if offline else {}))
    except Exception as exc:  # missing files, not that kind of model, hub refused: one line for the user
        if offline:
            raise MtdError(f"{what} {name!r}: not a local folder, not in the Hugging Face cache, and the Hub "
                           f"cannot be reached ({offline}): {hint}") from None
        raise MtdError(f"could not load {what} {name!r}: {_short(exc)}") from None


_REACH: dict[str, str | None] = {}


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached (``HF_HUB_OFFLINE``, or a failed connection), or None; asked
    once per process."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if getproxies().get("https"):
        return None  # behind a proxy a direct connection says nothing: let the Hub client try
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    if host not in _REACH:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _REACH[host] = None
        except OSError as exc:
            _REACH[host] = f"{host}: {exc.strerror or type(exc).__name__}"
    return _REACH[host]




def _short(exc: Exception) -> str:
    lines = [s for s in str(exc).splitlines() if s.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
