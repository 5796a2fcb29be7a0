"""Progress that shows on a terminal and in a log: a tqdm bar when stderr is a terminal, else a log line every
``MTD_PROGRESS_S`` seconds (default 60) with what is done, the rate, the ETA and the latest loss.

    with Progress(total=len(batches), desc="teacher seed 0 epoch 1/3", unit="step") as p:
        for batch in batches:
            ...
            p.update(1, examples=len(batch), loss=float(loss))

A line reads ``teacher seed 0 epoch 1/3: 120/344 steps (35%), 2.1 steps/s, 67 ex/s, loss 0.5123, ETA 1m47s``.

In a sweep's worker (``job_logging``) every log line, these included, is prefixed by the job it belongs to
and goes to the worker's stderr, which is the sweep's: a job's progress shows while it runs, never a bar
(several workers' bars would overwrite each other and the sweep's own).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("mtd_cache.core.progress")
DEFAULT_INTERVAL_S = 60.0
_JOB = {"name": ""}  # the sweep job this process runs now ("" outside a sweep's worker)


def interval_s() -> float:
    try:
        return max(0.0, float(os.environ.get("MTD_PROGRESS_S", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def duration(seconds: float) -> str:
    """``1h02m``, ``4m07s``, ``12s``."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """A bar on a terminal, periodic log lines elsewhere (``terminal`` overrides the detection)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", interval: float | None = None,
                 terminal: bool | None = None, logger: logging.Logger | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.terminal = (sys.stderr.isatty() and not _JOB["name"]) if terminal is None else terminal
        self.interval = interval_s() if interval is None else interval
        self.log = logger or log
        self.done = self.examples = 0
        self.postfix: dict[str, Any] = {}
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False) if self.terminal else None

    def update(self, n: int = 1, examples: int | None = None, **postfix: Any) -> None:
        self.done += n
        self.examples += examples or 0
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            return
        now = time.perf_counter()
        if self.interval and now - self.last >= self.interval:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%)" if self.total
                 else f"{self.done} {self.unit}s", f"{_rate(rate)} {self.unit}s/s"]
        if self.examples:
            parts.append(f"{_rate(self.examples / elapsed)} ex/s")
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        if self.total and rate > 0:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        return f"{self.desc}: " + ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def human_bytes(n: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 kB``: decimal units, two or three significant digits."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


class _JobPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job = _JOB["name"]
        return True


def job_logging(job: str, level: int = logging.INFO) -> None:
    """Log this process's lines to stderr, each prefixed by ``job`` (a sweep job in its worker process: a local
    worker, a Ray task, a Slurm job). Set once per process, the job named again for each job it runs.

    At ``level`` INFO a job says what the sweep's own lines do not: its periodic progress lines (every
    ``MTD_PROGRESS_S``, with its epoch, loss and ETA) and its warnings; its per-epoch and end-of-run lines,
    which a short job prints many of and the sweep's line per finished job repeats, show with ``-v``."""
    _JOB["name"] = job
    root = logging.getLogger()
    if not any(isinstance(f, _JobPrefix) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_JobPrefix())
        handler.setFormatter(logging.Formatter("%(asctime)s [%(job)s] %(name)s: %(message)s", "%H:%M:%S"))
        root.handlers[:] = [handler]
    root.setLevel(level if level < logging.INFO else max(level, logging.WARNING))
    log.setLevel(level)
