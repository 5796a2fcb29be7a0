"""Work done ahead in a thread: a store's reads overlap the training step that needs them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

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


class Ahead:
    """An epoch's items, ``fn`` applied to each as they are iterated: ``depth`` ahead in a thread (``prefetch``) when
    > 0, else in the loop. Sized (a progress bar's total, step numbers) and iterable again (a new pass each time)."""

    def __init__(self, items: list, fn: Callable[[Any], Any] | None = None, depth: int = 0):
        self.items, self.fn, self.depth = items, fn, depth

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator:
        if self.depth:
            return prefetch(self.items, self.depth, self.fn)
        return iter(self.items) if self.fn is None else (self.fn(i) for i in self.items)
