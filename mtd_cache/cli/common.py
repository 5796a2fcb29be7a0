"""What every command shares: one-line errors with exit status 2, logging, index-set options."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ..errors import MtdError


def run_command(cmd: click.Command, args: list[str] | None = None, prog: str | None = None) -> None:
    """Run a click command; bad input prints one line (no usage block, no traceback) and exits 2."""
    prog = prog or cmd.name or "mtd"
    try:
        rc = cmd.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors, bad parameters
        click.echo(f"{prog}: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(2)
    except MtdError as exc:
        click.echo(f"{prog}: error: {_one_line(str(exc))}", err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


def bad(param: str, value: Any, why: str) -> click.BadParameter:
    """A ``click.BadParameter`` whose one line names the option and the bad value."""
    return click.BadParameter(f"{value!r}: {why}", param_hint=f"'{param}'")
