"""``mtd-cache``: teachers, dump, import and inspect the teacher store."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .common import DATA_DIR, SEED, bad, check_out_folder, overrides_from, run_command, setup_logging


def default_cache(task: str) -> Path:
    """``cache/<task name>``: a task file's name, not its path."""
    from ..tasks.registry import get_task

    return Path("cache") / get_task(task).name
@click.group(help="Train seeded teachers once, cache their outputs in an HDF5 store, inspect stores.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    setup_logging(verbose)


@cli.command("inspect", help="Print what a store holds (task, sizes, teachers, primaries, fingerprint).")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--verify", is_flag=True, help="Hash every dataset against its recorded checksum (reads the whole "
                                             "file); a mismatch exits 2 naming the dataset.")
@click.option("--seal", is_flag=True, help="Verify every checksum the store records, hash the datasets that have "
                                           "none and seal it (a store written before seals, which students refuse): "
                                           "a sealed copy is written beside it and renamed into place.")
@click.option("--measure-forward", is_flag=True,
              help="Time one teacher inference again as an --online student pays it (warm, on a batch shaped as a "
                   "student's, every teacher in turn) and write it beside the store (STORE.forward.json): the "
                   "report prices the online-equivalent cost with it.")
@click.option("--teachers-dir", type=click.Path(path_type=Path),
              help="With --measure-forward: the store's teachers (default: the folders the dump found them in).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="With --measure-forward: examples per forward (default: 128 for images, 32 for text: the "
                   "students' batches).")
@click.option("--batches", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --measure-forward: timed forwards (each teacher's after 1.5 s of untimed ones).")
@click.option("--device", help="With --measure-forward: cpu, cuda (default: cuda when available).")
@click.option("--threads", type=click.IntRange(min=1),
              help="With --measure-forward: CPU threads, as many as each student run has (mtd-sweep --threads; by "
                   "default the cores over the workers).")
def inspect_cmd(store: Path, as_json: bool, verify: bool, seal: bool, measure_forward: bool,
                teachers_dir: Path | None, batch_size: int | None, batches: int, device: str | None,
                threads: int | None) -> None:
    from ..core.errors import StoreError
    from ..store import TeacherStore, output_lock, read_forward_sidecar
    from ..store.seal import seal_store
    from ..store.tokens import TokenStore, format_token_summary, is_token_store, token_summary

    if is_token_store(store):
        with TokenStore.open(store) as tokens:  # every checksum and the seal verified on opening
            info = token_summary(tokens)
        click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else format_token_summary(info))
        return
    if seal:
        with output_lock(store), TeacherStore.open(store):  # format, shapes, finite logits, recorded checksums
            done = seal_store(store)
        click.echo(f"sealed {store}: {len(done['verified'])} datasets matched their checksums, "
                   f"{len(done['hashed'])} hashed now" if done["sealed"] else f"{store} is sealed already: "
                   f"{len(done['verified'])} datasets match their checksums")
    with TeacherStore.open(store) as s:
        info = s.summary()
        checked = s.verify() if verify else None
        info["agreement"] = _agreement(s)
    if measure_forward:
        import torch

        from ..students.throughput import measure_forward as measure

        if threads:
            torch.set_num_threads(threads)
        measure(store, str(teachers_dir) if teachers_dir else None, batch_size, batches, device=device)
    sidecar = read_forward_sidecar(store, info["fingerprint"])
    info["forward"] = {"dump": info.get("teacher_forward_s"), "sidecar": sidecar}
    if checked is not None:
        info["verify"] = checked
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else format_summary(info))
    if checked is not None and checked["bad"]:
        raise StoreError(f"{store}: the dataset {checked['bad'][0]} does not match its checksum "
                         f"({len(checked['bad'])} of {len(checked['bad']) + len(checked['checked'])} checked)")


def _agreement(store) -> dict | None:
    from ..core.errors import MtdError
    from ..tasks.agreement import agreement

    try:
        return agreement(store)
    except MtdError:  # a store of a task mtd-cache cannot score: no statistics
        return None


def format_summary(info: dict) -> str:
    views = f", {info['num_views']} views" if info["num_views"] else ""
    lines = [
        f"store        {info['path']} ({info['size_bytes'] / 1e6:.1f} MB, {info['format']} v{info['version']})",
        f"task         {info['task']} (metric {info['metric']}; labels {', '.join(info['label_names'])})",
        f"examples     N={info['num_examples']}, C={info['num_classes']}{views}, dev M={info['num_dev']}",
        f"logits       {info['logits_dtype']}, teacher precision {info['precision']}",
        f"teachers     {len(info['teachers'])} x {info['teacher_model'] or '(unnamed)'}",
    ]
    for t in info["teachers"]:
        metric = "n/a" if t["dev_metric"] is None else f"{t['dev_metric']:.4f}"
        lines.append(f"  [{t['index']}] seed {t['seed']}  dev {info['metric']} {metric}  {t['path'] or ''}".rstrip())
    for t, p in info["primaries"].items():
        lines.append(f"primary {t}    hidden layers {p['hidden_layers']}, attention layers {p['attn_layers']} "
                     f"({p['bytes'] / 1e6:.1f} MB, mean length {p['mean_length']:.1f})")
    if not info["primaries"]:
        lines.append("primaries    none")
    energy = "unknown" if info["dump_energy_j"] is None else f"{info['dump_energy_j']:.0f} J"
    lines.append(f"dump cost    {info['dump_wall_s']:.1f} s, energy {energy}")
    lines.append(f"teacher rate {_rate_line(info)}")
    lines.append(f"fingerprint  {info['fingerprint']}")
    lines.append(f"seal         {info['seal_sha256']}" if info.get("seal_sha256") else "seal         none: students "
                 "refuse it (its attributes cannot be verified); mtd-cache inspect --seal adds one")
    v = info.get("verify")
    if v is not None:
        if not v["checked"] and not v["bad"]:
            lines.append("checksums    no checksums recorded (a store written before mtd-cache recorded them)")
        else:
            state = f"MISMATCH in {', '.join(v['bad'])}" if v["bad"] else "all match"
            lines.append(f"checksums    {len(v['checked']) + len(v['bad'])} datasets verified: {state}"
                         + (f"; {len(v['unrecorded'])} without a checksum" if v["unrecorded"] else ""))
        if info.get("seal_sha256"):
            lines.append("attributes   every attribute and checksum as sealed")
    if info.get("agreement"):
        from ..tasks.agreement import agreement_lines

        lines += agreement_lines(info["agreement"])
    return "\n".join(lines)


def _rate_line(info: dict) -> str:
    """One teacher inference per item: the dump's median (and quartiles), and a sidecar's re-measurement."""
    fwd = info.get("forward") or {}
    dump = info.get("teacher_forward_s")
    text = "not recorded (dumped before it was)" if dump is None else \
        f"{1e3 * dump:.4g} ms per item at the dump"
    if dump is not None and info.get("teacher_forward_s_q25") is not None:
        text += f" (quartiles {1e3 * info['teacher_forward_s_q25']:.4g}-{1e3 * info['teacher_forward_s_q75']:.4g}, " \
                f"{int(info.get('teacher_forward_chunks') or 0)} chunks)"
    side = fwd.get("sidecar")
    if side:
        text += f"; re-measured {1e3 * side['teacher_forward_s']:.4g} ms ({side['file']}, {side.get('batches')} " \
                f"batches of {side.get('batch_items')}, {side.get('measured_utc')}): the report uses it"
    return text


@cli.command("import", help="Build a store from teacher logits saved as .npy arrays (teachers from any framework).")
@click.option("--task", required=True,
              help="A built-in task or a task file: the logits are tied to its training examples (row i = example "
                   "i) and students can train on the store. Any other name: logits and labels only.")
@click.option("--logits", "logits_path", required=True, type=click.Path(path_type=Path),
              help="Training logits, (N, T, C) or (N, V, T, C), raw (before any temperature).")
@click.option("--labels", "labels_path", required=True, type=click.Path(path_type=Path), help="Gold labels (N,).")
@click.option("--dev-logits", type=click.Path(path_type=Path), help="Dev/test logits (M, T, C).")
@click.option("--dev-labels", type=click.Path(path_type=Path), help="Dev/test labels (M,).")
@click.option("--views", "views_path", type=click.Path(path_type=Path), help="View table (V, 3): dy, dx, flip.")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path),
              help="The inputs the logits were computed from (.npy), hashed into the fingerprint.")
@click.option("--label-names", help="Comma-separated class names (default: the task's, or 0..C-1).")
@click.option("--metric", help="Metric name (default: the task's, or accuracy).")
@click.option("--teacher-model", default="", help="What the teachers are (recorded).")
@click.option("--teacher-seeds", help="Comma-separated seed of each teacher (recorded).")
@click.option("--float16", is_flag=True, help="Store logits as float16 (for large view sets).")
@click.option("--tokenizer", help="Text tasks: the tokenizer students will tokenise with (Hub name or folder).")
@click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True,
              help="Text tasks: tokens per example.")
@click.option("--data-dir", type=DATA_DIR, help="Where the task's data lives (a task file's folder by default).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Store file to write.")
@click.option("--force", is_flag=True, help="Import teachers the quality gate rejects (one class for every dev "
                                            "example).")
def import_cmd(task: str, logits_path: Path, labels_path: Path, dev_logits: Path | None, dev_labels: Path | None,
               views_path: Path | None, inputs_path: Path | None, label_names: str | None, metric: str | None,
               teacher_model: str, teacher_seeds: str | None, float16: bool, tokenizer: str | None,
               max_length: int, data_dir: str | None, out: Path, force: bool) -> None:
    from ..teachers.importer import import_arrays

    arrays = {name: _load_npy(flag, path) for name, flag, path in [
        ("logits", "--logits", logits_path), ("labels", "--labels", labels_path),
        ("dev_logits", "--dev-logits", dev_logits), ("dev_labels", "--dev-labels", dev_labels),
        ("views", "--views", views_path), ("inputs", "--inputs", inputs_path)] if path is not None}
    seeds = None
    if teacher_seeds:
        try:
            seeds = tuple(int(x) for x in teacher_seeds.split(","))
        except ValueError:
            raise bad("--teacher-seeds", teacher_seeds, "expected comma-separated integers") from None
    path = import_arrays(out, task=task, label_names=label_names.split(",") if label_names else None,
                         metric=metric, teacher_model=teacher_model, teacher_seeds=seeds,
                         dtype="float16" if float16 else "float32", tokenizer=tokenizer, max_length=max_length,
                         data_dir=data_dir, force=force, **arrays)
    click.echo(f"wrote {path}")


def _load_npy(flag: str, path: Path) -> np.ndarray:
    if not path.exists():
        raise bad(flag, str(path), "no such file")
    if not path.is_file():  # a FIFO would block np.load
        raise bad(flag, str(path), "not a regular file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise bad(flag, str(path), f"not a readable .npy array ({' '.join(str(exc).split())[:80]})") from None


@cli.command("teachers", help="Train seeded teachers (skips seeds already done; resumes per epoch).")
@click.option("--task", required=True, help="Task: cifar10, fashion-mnist, digits, mrpc, cola, sst-2, ..., or a task "
                                            "file (text, image or language modelling: docs/guide.md)")
@click.option("--model", help="Teacher model: a CIFAR ResNet (resnet110: images) or tv:NAME[@WEIGHTS] (torchvision); "
                               "hf:NAME_OR_PATH, or a bare Hub name or folder (text; bert-base-uncased); on a "
                               "language-modelling task a causal LM hf:NAME_OR_PATH (a Hub name, a folder, a .gguf "
                               "file, or a folder holding only a config.json: trained from scratch).")
@click.option("--seeds", default="0-5", show_default=True, help="Seeds, e.g. 0-5 or 0,3.")
@click.option("--data-dir", type=DATA_DIR,
              help="Where the task's data lives (default: download when online / bundled).")
@click.option("--out", type=click.Path(path_type=Path), help="Default: cache/<task>/teachers.")
@click.option("--epochs", type=int, help="Training epochs (recipe default: 200 ResNet, 3 BERT).")
@click.option("--lr", type=float, help="Peak learning rate (recipe default: 0.1 ResNet, 2e-5 BERT).")
@click.option("--batch-size", type=int, help="Batch size (default: 128 ResNet, 32 BERT).")
@click.option("--max-length", type=int, help="GLUE: maximum tokens (default 128).")
@click.option("--legacy-warmup", is_flag=True,
              help="ResNet-110: reproduce the reference code's warm-up that never restores lr 0.1.")
@click.option("--train-subset", type=int, help="Train on the first N training examples only (a quick CPU run).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other recipe setting.")
@click.option("--device", help="cpu, cuda, cuda:N (default: cuda when available).")
@click.option("--force", is_flag=True, help="Accept teachers the quality gate rejected (without training them "
                                            "again); train again a seed whose folder holds other settings.")
def teachers_cmd(task, model, seeds, data_dir, out, epochs, lr, batch_size, max_length, legacy_warmup,
                 train_subset, sets, device, force) -> None:
    from ..core.indices import parse_index_set
    from ..core.settings import typed_as
    from ..teachers import train_teachers

    check_out_folder("--out", out)
    options, typed = overrides_from({"epochs": ("--epochs", epochs), "lr": ("--lr", lr),
                                     "batch_size": ("--batch-size", batch_size),
                                     "max_length": ("--max-length", max_length),
                                     "legacy_warmup": ("--legacy-warmup", legacy_warmup or None),
                                     "train_subset": ("--train-subset", train_subset)}, sets)
    out = out or default_cache(task) / "teachers"
    chosen = parse_index_set(seeds, option="--seeds", bound=2**32, what="seeds go up to 2^32-1:",
                             max_count=10_000)
    with typed_as(typed):
        done = train_teachers(task, chosen, out, model, data_dir, options, device=device, force=force)
    for t in done:
        click.echo(f"seed {t.seed}: {t.info['metric_name']} {t.info['metric']:.4f}  {t.path}")


@cli.command("dump", help="Run every teacher over the data once and write the store (resumable).")
@click.option("--task", required=True)
@click.option("--teachers-dir", type=click.Path(path_type=Path), help="Default: cache/<task>/teachers.")
@click.option("--primary", "primaries", default="", help="Teacher indices whose states are stored (BERT).")
@click.option("--augmented", type=click.Path(path_type=Path), help="TinyBERT augmented training file.")
@click.option("--student-layers", type=int,
              help="TinyBERT: keep the primary's hidden states g(0..L_S) and attention scores g(1..L_S), "
                   "g(k) = k*L_T/L_S (4 for TinyBERT-4L).")
@click.option("--max-length", type=int, help="GLUE: maximum tokens (default 128).")
@click.option("--batch-size", type=int, help="Inference batch size.")
@click.option("--data-dir", type=DATA_DIR, help="Where the task's data lives.")
@click.option("--train-subset", type=int, help="Cache only the first N training examples.")
@click.option("--test-subset", type=int, help="Images: score teachers (and later students) on the first N test "
                                              "images only (quick CPU runs).")
@click.option("--float16", is_flag=True, help="Store logits as float16 (large view sets).")
@click.option("--k", "top_k", type=int, help="Language models: each teacher's top-k ids per token; the token store "
                                             "keeps their union (default 32).")
@click.option("--dense-check", is_flag=True, help="Language models: also keep the dense logits and check every "
                                                  "subset's sparse targets against them (small vocabularies).")
@click.option("--shard", help="Language models: dump only shard I of N (I/N, from 0/N) of the sequences, as one job "
                              "of many; a dump without --shard then merges the shards (computing any missing).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other dump setting.")
@click.option("--out", type=click.Path(path_type=Path), help="Default: cache/<task>/store.h5.")
@click.option("--device")
@click.option("--force", is_flag=True, help="Dump again over an existing store made with other settings.")
def dump_cmd(task, teachers_dir, primaries, augmented, student_layers, max_length, batch_size, data_dir,
             train_subset, test_subset, float16, top_k, dense_check, shard, sets, out, device, force) -> None:
    from ..core.indices import parse_index_set
    from ..core.settings import typed_as
    from ..teachers.dump import run_dump

    prim = parse_index_set(primaries, option="--primary", max_count=1000) if primaries else ()
    options, typed = overrides_from({
        "max_length": ("--max-length", max_length), "batch_size": ("--batch-size", batch_size),
        "data_dir": ("--data-dir", data_dir), "augmented": ("--augmented", str(augmented) if augmented else None),
        "train_subset": ("--train-subset", train_subset), "test_subset": ("--test-subset", test_subset),
        "student_layers": ("--student-layers", student_layers),
        "logits_dtype": ("--float16", "float16" if float16 else None), "k": ("--k", top_k),
        "dense_check": ("--dense-check", dense_check or None)}, sets)
    if shard is not None:
        from ..teachers.lm_dump import parse_shard

        shard = parse_shard(shard)
    out = out or default_cache(task) / "store.h5"
    if out.is_dir():
        raise bad("--out", str(out), "is a folder: give the store's file name (e.g. cache/task/store.h5)")
    with typed_as(typed):
        before = out.stat().st_mtime_ns if out.exists() else None
        path = run_dump(task, teachers_dir or default_cache(task) / "teachers", out, prim, options, device, force,
                        shard)
    if shard is not None:
        click.echo(f"wrote shard {shard[0]}/{shard[1]}: {path} (a dump without --shard merges the shards)")
        return
    click.echo(f"{'up to date' if before == path.stat().st_mtime_ns else 'wrote'} {path}")


@cli.command("augment", help="TinyBERT's data augmentation of a GLUE training set (resumable; "
                             "writes the task's TSV plus .source.npy and .settings.json sidecars).")
@click.option("--task", required=True, help="GLUE task: mrpc, cola, sst-2, ...")
@click.option("--mlm", default="bert-base-uncased", show_default=True,
              help="BERT masked LM (Hub name or folder) proposing words for one-piece candidates.")
@click.option("--glove", type=click.Path(path_type=Path),
              help="GloVe text file (first 100,000 lines) for multi-piece words; without it they stay unchanged.")
@click.option("--out", type=click.Path(path_type=Path), help="Default: cache/<task>/augmented/train_aug.tsv.")
@click.option("--data-dir", type=DATA_DIR, help="GLUE folder holding <Task>/train.tsv (or the task folder itself).")
@click.option("--rounds", type=int, help="N rounds (default per task: CoLA 30, MRPC 30, SST-2 20, ...).")
@click.option("--top-k", type=int, default=15, show_default=True, help="K candidates per position.")
@click.option("--p", "p", type=float, default=0.4, show_default=True, help="Probability of replacing a word.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--force-mlm", is_flag=True, help="Accept an MLM whose prediction head is newly initialised.")
@click.option("--limit", type=int, help="Augment only the first N training examples.")
@click.option("--device", help="cpu, cuda, cuda:N (default: cuda when available).")
def augment_cmd(task, mlm, glove, out, data_dir, rounds, top_k, p, seed, force_mlm, limit, device) -> None:
    from ..augment.run import AugmentConfig, augment_task

    done = augment_task(AugmentConfig(task=task, data_dir=data_dir, mlm=mlm, glove=glove, out=out, rounds=rounds,
                                      top_k=top_k, p=p, seed=seed, force_mlm=force_mlm, limit=limit, device=device))
    click.echo(f"wrote {done.path}: {done.rows} rows from {done.examples} examples")


def main() -> None:
    run_command(cli, prog="mtd-cache")


if __name__ == "__main__":
    main()
