"""``mtd-sweep``: the paper's full combination sweep, resumable, on one machine, Ray or Slurm."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    DATA_DIR,
    SEED,
    STUDENT_HELP,
    check_out_folder,
    check_student,
    overrides_from,
    run_command,
    setup_logging,
)


def _students(ctx, param, value: str) -> int | str:
    from ..students.pack import MAX_STUDENTS

    if value == "auto":
        return value
    if value.isdigit() and 1 <= int(value) <= MAX_STUDENTS:
        return int(value)
    raise click.BadParameter(f"{value!r}: a number of students from 1 to {MAX_STUDENTS}, or auto")


def _rules(ctx, param, value: str | None) -> tuple[str, ...]:
    from ..core.losses import KD_RULES

    if not value:
        return ()
    rules = tuple(r.strip() for r in value.split(","))
    bad = [r for r in rules if r not in KD_RULES]
    if bad:
        raise click.BadParameter(f"unknown rule {bad[0]!r}; known: {', '.join(KD_RULES)}")
    if len(set(rules)) != len(rules):
        raise click.BadParameter(f"{value!r} names a rule twice")
    return rules


@click.command(help="Run every k-subset of the teacher pool (every primary for BERT students) x repeats, "
                    "plus the CE-only baselines; skips runs already done.")
@click.option("--store", "stores", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Teacher store; given R times, store r serves repeat r (TinyBERT augmentation files).")
@click.option("--student", required=True, callback=check_student, help=STUDENT_HELP)
@click.option("--pool", default="0-5", show_default=True, help="Teacher indices to sweep over.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds per (subset, primary).")
@click.option("--base-seed", type=SEED, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel worker processes; more than the GPUs puts several on each (as many as fit its "
                   "memory).")
@click.option("--students-per-process", "students", default="1", show_default=True, callback=_students,
              help="Image students trained as one model per process (a pack: one batch, one gather of the store, "
                   "S stacked models; same run ids and records). A number up to 64, or auto: as many as fit the "
                   "GPU (1 on the CPU, where a pack trains no faster).")
@click.option("--gpus-per-run", type=click.FloatRange(min=0, max=1, min_open=True),
              help="With --executor ray: the fraction of a GPU each run (or pack) asks for (default 1).")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads of each run (default: OMP_NUM_THREADS when set, else the cores split over the "
                   "workers). Recorded in every run: a resume on another count is refused (other numbers).")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default="local", show_default=True)
@click.option("--address", help="Ray cluster address (default: start a local instance).")
@click.option("--slurm-partition", help="Slurm partition.")
@click.option("--slurm-time", type=click.IntRange(min=1), default=240, show_default=True,
              help="Slurm time limit, minutes.")
@click.option("--slurm-local", is_flag=True,
              help="With --executor slurm: run the jobs as local processes through submitit (no Slurm needed).")
@click.option("--slurm-gpus", type=click.IntRange(min=0), default=1, show_default=True, help="GPUs per Slurm job.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--epochs", type=int, help="Student epochs (recipe default).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any student recipe setting.")
@click.option("--data-dir", type=DATA_DIR, help="Where the task's data lives.")
@click.option("--device", help="cpu, cuda (default: cuda when available).")
@click.option("--online-teachers-dir", type=click.Path(path_type=Path),
              help="Run every student with its teachers online from this folder (the baseline the store beats).")
@click.option("--online-twins", type=click.Path(path_type=Path),
              help="Follow each student run with its online twin (its teachers from this folder run inside the "
                   "loop; same teachers, primary and seed): measured online costs, timed under the same load as "
                   "the cached runs, that the report checks its estimates against.")
@click.option("--twin-repeats", type=click.IntRange(min=1),
              help="With --online-twins: twin the runs of the first N repeats only (default: every repeat).")
@click.option("--rules", callback=_rules, metavar="RULE,...",
              help="Run the plan once per KD rule (mean_logits first: the report compares every other against it), "
                   "one experiment each; the k = 1 and CE-only runs, the same under every rule, once. Rules: "
                   "mean_logits, mean_probs, mean_losses, ca_mkd, entropy, ae_kd, min_ce, avg_ce, random_subset "
                   "(with --set subset_size=J).")
@click.option("--order", type=click.Choice(["plan", "shuffled"]), default="plan", show_default=True,
              help="plan: stage 1, CE-only, then k ascending; shuffled: the students in a seeded random order, so a "
                   "machine's changing load does not follow k in the per-k costs.")
@click.option("--allow-unverified", is_flag=True,
              help="Train on stores without a seal (their bytes cannot be verified); every record says so.")
@click.option("--dry-run", is_flag=True, help="Print the plan and its estimated cost; run nothing.")
@click.option("-v", "--verbose", is_flag=True)
def cli(stores, student, pool, repeats, base_seed, workers, students, gpus_per_run, threads, executor, address,
        slurm_partition, slurm_time, slurm_local, slurm_gpus, out, epochs, sets, data_dir, device, online_teachers_dir,
        online_twins, twin_repeats, rules, order, allow_unverified, dry_run, verbose) -> None:
    from ..core.indices import parse_index_set
    from ..core.settings import typed_as
    from ..sweeps.execute import SweepConfig, run_sweep, sweep_outcome

    setup_logging(verbose)
    check_out_folder("--out", out)
    if online_twins and online_teachers_dir:
        raise click.BadParameter("give --online-twins or --online-teachers-dir, not both",
                                 param_hint="'--online-twins'")
    if twin_repeats and not online_twins:
        raise click.BadParameter("--twin-repeats needs --online-twins", param_hint="'--twin-repeats'")
    if base_seed + repeats - 1 >= 2**32:
        raise click.BadParameter(f"{base_seed} + {repeats} repeats passes the largest seed 2^32 - 1",
                                 param_hint="'--base-seed'")
    overrides, typed = overrides_from({"epochs": ("--epochs", epochs)}, sets)
    with typed_as(typed):
        cfg = SweepConfig(stores=tuple(str(s) for s in stores), student=student,
                          pool=parse_index_set(pool, option="--pool", max_count=10_000), repeats=repeats,
                          base_seed=base_seed, out=str(out), overrides=overrides, data_dir=data_dir, device=device,
                          threads=threads, allow_unverified=allow_unverified,
                          teachers_dir=str(online_teachers_dir) if online_teachers_dir else None,
                          twins_dir=str(online_twins) if online_twins else None, twin_repeats=twin_repeats,
                          order=order, students_per_process=students, gpus_per_run=gpus_per_run, rules=rules)
        slurm = {"timeout_min": slurm_time, "gpus_per_node": slurm_gpus,
                 **({"slurm_partition": slurm_partition} if slurm_partition else {}),
                 **({"cluster": "local"} if slurm_local else {})}
        results = run_sweep(cfg, workers=workers, executor=executor, address=address, dry_run=dry_run, slurm=slurm)
    click.echo(sweep_outcome(results))


def main() -> None:
    run_command(cli, prog="mtd-sweep")


if __name__ == "__main__":
    main()
