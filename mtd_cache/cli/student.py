"""``mtd-train``: distil one student from the average of k cached teachers."""

from __future__ import annotations

import json
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


@click.command(help="Distil one student from the averaged logits of the chosen teachers.")
@click.option("--store", type=click.Path(path_type=Path), help="Teacher store (mtd-cache dump).  [required]")
@click.option("--student", callback=check_student, help=STUDENT_HELP + "  [required]")
@click.option("--teachers", help="Teacher indices: 0,2,5 or 0-5; 'none' for the CE-only baseline (k = 0).  "
                                 "[required]")
@click.option("--primary", type=click.IntRange(min=0),
              help="Primary teacher (BERT students): its states drive the extra losses.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--epochs", type=int, help="Training epochs (recipe default).")
@click.option("--lr", type=float, help="Learning rate (recipe default).")
@click.option("--batch-size", type=int, help="Batch size (recipe default).")
@click.option("--temperature", type=float, help="KD temperature (recipe default).")
@click.option("--alpha-kd", type=float, help="Weight of the KD term (recipe default).")
@click.option("--kd-scale", type=click.Choice(["sum_t2", "sum", "mean"]), help="KD scale convention.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other recipe setting (--student S --help-settings lists them).")
@click.option("--online", is_flag=True, help="Run the teachers inside the loop instead of reading the store.")
@click.option("--teachers-dir", type=click.Path(path_type=Path), help="Teachers for --online.")
@click.option("--init-from-teacher", is_flag=True, help="BERT students: start from evenly spaced teacher layers.")
@click.option("--select-on-dev", is_flag=True,
              help="TinyBERT: report the best dev score seen every eval_step steps, as the reference does "
                   "(selects on the evaluation set; default: the final model).")
@click.option("--data-dir", type=DATA_DIR, help="Where the task's data lives.")
@click.option("--device", help="cpu, cuda, cuda:N (default: cuda when available).")
@click.option("--force", is_flag=True, help="Train again even if the same run is done.")
@click.option("--no-save-model", is_flag=True, help="Do not keep the student's weights (<run_id>.model.safetensors).")
@click.option("--evaluate", "evaluate", metavar="RUN_ID",
              help="Score a finished run's kept weights again on the evaluation split (under --out).")
@click.option("--allow-unverified", is_flag=True,
              help="Train on a store without a seal (written before checksums, or stripped): its bytes cannot be "
                   "verified. The record says so. Better: mtd-cache inspect --seal STORE.")
@click.option("--help-settings", is_flag=True, help="Every setting of --student's recipe: default, range, source.")
@click.option("-v", "--verbose", is_flag=True)
def cli(store, student, teachers, primary, seed, out, epochs, lr, batch_size, temperature, alpha_kd, kd_scale,
        sets, online, teachers_dir, init_from_teacher, select_on_dev, data_dir, device, force, no_save_model,
        evaluate, allow_unverified, help_settings, verbose) -> None:
    from ..core.indices import parse_index_set
    from ..core.settings import typed_as
    from ..store.tokens import open_store
    from ..students.run import RunRequest, run_student

    setup_logging(verbose)
    if help_settings:
        if not student:
            raise click.UsageError("--help-settings needs --student (the recipe whose settings to list)")
        click.echo(settings_help(student))
        return
    if evaluate:
        from ..students.run import evaluate_run

        click.echo(json.dumps(evaluate_run(evaluate, str(out), data_dir, device, allow_unverified)))
        return
    missing = [o for o, v in (("--store", store), ("--student", student), ("--teachers", teachers)) if v is None]
    if missing:
        raise click.UsageError(f"missing option {missing[0]} (or give --evaluate RUN_ID, or --help-settings)")
    check_out_folder("--out", out)
    overrides, typed = overrides_from({
        "epochs": ("--epochs", epochs), "lr": ("--lr", lr), "batch_size": ("--batch-size", batch_size),
        "temperature": ("--temperature", temperature), "alpha_kd": ("--alpha-kd", alpha_kd),
        "kd_scale": ("--kd-scale", kd_scale), "init_from_teacher": ("--init-from-teacher", init_from_teacher or None),
        "select_on_dev": ("--select-on-dev", select_on_dev or None)}, sets)
    with typed_as(typed):
        with open_store(store) as s:  # the teacher count bounds --teachers before it is expanded
            chosen = () if teachers.strip().lower() == "none" else \
                parse_index_set(teachers, option="--teachers", bound=s.num_teachers)
        req = RunRequest(store=str(store), student=student, teachers=chosen, primary=primary, seed=seed,
                         out=str(out), overrides=overrides, online=online,
                         teachers_dir=str(teachers_dir) if teachers_dir else None, data_dir=data_dir, device=device,
                         force=force, save_model=not no_save_model, allow_unverified=allow_unverified)
        rec = run_student(req)
    click.echo(json.dumps({k: rec.get(k) for k in ("run_id", "student", "teachers", "primary", "seed", "metric_name",
                                                    "metric", "wall_s")}))


def settings_help(student: str) -> str:
    """The recipe's settings as a text table (``--help-settings``)."""
    from ..students.recipes import get_recipe, recipe_name

    rows = get_recipe(student).Settings.describe()
    width = max(len(r["key"]) for r in rows)
    lines = [f"{student}: recipe {recipe_name(student)}; set any with --set KEY=VALUE", ""]
    for r in rows:
        rng = f" [{r['range']}]" if r["range"] else ""
        lines.append(f"  {r['key']:<{width}}  {r['type']} = {r['default']!r}{rng}")
        if r["source"]:
            lines.append(f"  {'':<{width}}    {r['source']}")
    return "\n".join(lines)


def main() -> None:
    run_command(cli, prog="mtd-train")


if __name__ == "__main__":
    main()
