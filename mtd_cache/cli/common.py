"""What every command shares: one-line errors with exit status 2, logging, index-set options."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from ..core.errors import EXIT_BAD_INPUT, EXIT_RESOURCE, MtdError, is_resource_fault, os_error_line
from ..students.recipes import known_students

SEED = click.IntRange(0, 2**32 - 1)  # numpy's seed range; torch takes it too
DATA_DIR = click.Path(exists=True, file_okay=False)  # a folder that is there: never silently another (or none)
STUDENT_HELP = f"Student: {known_students()}: hf: students train with text KD, image families with image KD."


def check_student(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse an unknown student name before any work (the model itself loads at the run's start)."""
    from ..students.recipes import recipe_name

    if value is not None:
        try:
            recipe_name(value)
        except MtdError as exc:
            raise click.BadParameter(str(exc), param_hint="'--student'") from None
    return value


def run_command(cmd: click.Command, args: list[str] | None = None, prog: str | None = None) -> None:
    """Run a click command; bad input prints one line (no usage block, no traceback) and exits 2."""
    prog = prog or cmd.name or "mtd"
    try:
        rc = cmd.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors, bad parameters
        click.echo(f"{prog}: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except MtdError as exc:
        click.echo(f"{prog}: error: {_one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a path that cannot be written or read, a full disk: one line, no traceback
        code = EXIT_RESOURCE if is_resource_fault(exc) else EXIT_BAD_INPUT
        click.echo(f"{prog}: error: {_one_line(os_error_line(exc))}", err=True)
        sys.exit(code)
    except MemoryError:
        click.echo(f"{prog}: error: out of memory (use a smaller --batch-size, or fewer workers)", err=True)
        sys.exit(EXIT_RESOURCE)
    except Exception as exc:  # a library's own error for a full disk (torch, safetensors, h5py): exit 3
        if not is_resource_fault(exc):
            raise
        click.echo(f"{prog}: error: {_one_line(str(exc))[:300]} (free some space, then run the same command "
                   "again: it resumes)", err=True)
        sys.exit(EXIT_RESOURCE)
    sys.exit(rc if isinstance(rc, int) else 0)


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


def overrides_from(named: dict[str, tuple[str, Any]], sets: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """(overrides, how each was typed) from named options ``{key: (flag, value)}`` and ``--set KEY=VALUE`` items.

    ``--set`` values are JSON when they parse (numbers, true, lists), else strings; ``--set`` has the last
    word over a named option for the same key (as it always had).
    """
    overrides, typed = {}, {}
    for key, (flag, value) in named.items():
        if value is not None:
            overrides[key], typed[key] = value, f"{flag} {value}"
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise bad("--set", item, "expected KEY=VALUE")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
        typed[key] = f"--set {item}"
    return overrides, typed


def check_out_folder(option: str, path: Any) -> None:
    """An output folder must not be an existing file (refused before any work)."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise bad(option, str(path), "is a file, not a folder")


def bad(param: str, value: Any, why: str) -> click.BadParameter:
    """A ``click.BadParameter`` whose one line names the option and the bad value."""
    return click.BadParameter(f"{value!r}: {why}", param_hint=f"'{param}'")
