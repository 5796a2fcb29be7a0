"""Run a command-line tool in this process, as its console script would (``run_command``): its exit status and
what it printed, log lines included. Faster than a subprocess (no second import of torch) for tests that only
need the command's outcome; tests of processes (kills, markers shared between processes) use subprocesses."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from mtd_cache.cli.common import run_command

MODULES = {"mtd-train": "student", "mtd-cache": "cache", "mtd-sweep": "sweep", "mtd-report": "report"}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(prog: str | Path, *args) -> Result:
    prog = Path(prog).name
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_command(import_module(f"mtd_cache.cli.{MODULES[prog]}").cli, [str(a) for a in args], prog=prog)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return Result(code, out.getvalue(), err.getvalue())
