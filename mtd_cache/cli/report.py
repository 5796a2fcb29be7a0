"""``mtd-report``: tables and the paper's figures from a folder of run records."""

from __future__ import annotations

from pathlib import Path

import click

from .common import bad, check_out_folder, run_command, setup_logging


@click.command(help="Tables (CSV, markdown) and figures (PNG) from the run records under RUNS_DIR.")
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Default: RUNS_DIR/report.")
@click.option("--repeats", type=click.IntRange(min=1),
              help="R for the equal-effort comparison (default: distinct seeds).")
@click.option("--experiment", help="Report only the experiment whose id starts with this (runs.csv lists them).")
@click.option("--bootstrap", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Resamples (of the evaluation examples, and of the repeats when R >= 2) for the 95% intervals.")
@click.option("-v", "--verbose", is_flag=True)
def cli(runs_dir: Path, out: Path | None, repeats: int | None, experiment: str | None, bootstrap: int,
        verbose: bool) -> None:
    from ..sweeps.report import make_report

    setup_logging(verbose)
    check_out_folder("--out", out)
    if not runs_dir.is_dir():
        raise bad("RUNS_DIR", str(runs_dir), "is not a folder of run records (mtd-train and mtd-sweep write them "
                                             "with --out FOLDER)")
    files = make_report(runs_dir, out or runs_dir / "report", repeats, experiment=experiment, n_resamples=bootstrap)
    for f in files:
        click.echo(str(f))


def main() -> None:
    run_command(cli, prog="mtd-report")


if __name__ == "__main__":
    main()
