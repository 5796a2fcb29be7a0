"""Index sets as users type them (``0,2,5``, ``0-5``): teachers, pools, seeds, primaries."""

from __future__ import annotations

import re

from .errors import MtdError

_INT = re.compile(r"^[0-9]+$")  # ASCII digits only: int() also takes other scripts' digits


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
