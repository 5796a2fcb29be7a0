"""``mtd-sweep``: the paper's full combination sweep, resumable, on one machine, Ray or Slurm."""

from __future__ import annotations

from pathlib import Path

import click

from ..students.recipes import STUDENTS
from .cache import parse_sets
from .common import run_command, setup_logging


@click.command(help="Run every k-subset of the teacher pool (every primary for BERT students) x repeats, "
                    "plus the CE-only baselines; skips runs already done.")
@click.option("--store", "stores", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Teacher store; given R times, store r serves repeat r (TinyBERT augmentation files).")
@click.option("--student", required=True, type=click.Choice(list(STUDENTS)))
@click.option("--pool", default="0-5", show_default=True, help="Teacher indices to sweep over.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Seeds per (subset, primary).")
@click.option("--base-seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Parallel runs (one GPU each).")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default="local", show_default=True)
@click.option("--address", help="Ray cluster address (default: start a local instance).")
@click.option("--slurm-partition", help="Slurm partition.")
@click.option("--slurm-time", type=int, default=240, show_default=True, help="Slurm time limit, minutes.")
@click.option("--slurm-gpus", type=int, default=1, show_default=True, help="GPUs per Slurm job.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--epochs", type=int, help="Student epochs (recipe default).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any student recipe setting.")
@click.option("--data-dir", help="Where the task's data lives.")
@click.option("--device", help="cpu, cuda (default: cuda when available).")
@click.option("--online-teachers-dir", type=click.Path(path_type=Path),
              help="Run every student with its teachers online from this folder (the baseline the store beats).")
@click.option("--dry-run", is_flag=True, help="Print the plan and its estimated cost; run nothing.")
@click.option("-v", "--verbose", is_flag=True)
def cli(stores, student, pool, repeats, base_seed, workers, executor, address, slurm_partition, slurm_time,
        slurm_gpus, out, epochs, sets, data_dir, device, online_teachers_dir, dry_run, verbose) -> None:
    from ..sweeps.execute import SweepConfig, run_sweep
    from ..utils import parse_index_set

    setup_logging(verbose)
    overrides = {k: v for k, v in {"epochs": epochs, **parse_sets(sets)}.items() if v is not None}
    cfg = SweepConfig(stores=tuple(str(s) for s in stores), student=student,
                      pool=parse_index_set(pool, option="--pool"), repeats=repeats, base_seed=base_seed,
                      out=str(out), overrides=overrides, data_dir=data_dir, device=device,
                      teachers_dir=str(online_teachers_dir) if online_teachers_dir else None)
    slurm = {"timeout_min": slurm_time, "gpus_per_node": slurm_gpus,
             **({"slurm_partition": slurm_partition} if slurm_partition else {})}
    results = run_sweep(cfg, workers=workers, executor=executor, address=address, dry_run=dry_run, slurm=slurm)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    click.echo(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to run")


def main() -> None:
    run_command(cli, prog="mtd-sweep")


if __name__ == "__main__":
    main()
