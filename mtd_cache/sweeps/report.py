"""The report: tables and the paper's figures from a folder of run records, per experiment, never across.

Files (``mtd-report RUNS --out DIR``): ``runs.csv``/``.md`` every run (its experiment, dead runs
marked), ``summary.csv`` the full per-k table of every experiment (means, stds, 95% intervals),
``summary.md`` a short readable table per experiment with the evaluation set's granularity,
``differences.csv``/``.md`` the modes' paired differences per k with their intervals (when the runs
kept their predictions), ``cost.csv``/``.md`` (the store's cost and the online-equivalent, per mode and k),
and per experiment the four figures ``<task>_<student>[_<experiment>]_<name>.png``, ``<name>`` one of
``score_vs_k``, ``score_vs_online_time`` (the paper's figs 4, 5, 7), ``score_vs_cached_time`` (the store's)
and ``equal_effort_vs_k`` (the experiment's id in the name only when a task and student have several).
Aggregation: ``aggregate.py``; intervals: ``uncertainty.py``; records: ``records.py``; costs: ``costs.py``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MtdError
from ..utils import atomic_path, slug
from .aggregate import CURVES, aggregate
from .costs import cost_summary, run_costs
from .figures import figures
from .records import UNASSIGNED, load_records
from .uncertainty import N_RESAMPLES, experiment_intervals

log = logging.getLogger(__name__)

CE_ONLY_LABEL = "CE-only students (mean)"
READABLE = {"multi_min": "multi-teacher worst", "multi_max": "multi-teacher best",
            "single_min": "single-teacher worst", "single_max": "single-teacher best"}


def summarize(df: pd.DataFrame, pool: Iterable[int] | None = None, repeats: int | None = None,
              n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list]]:
    """(per-k summary with intervals, paired differences, notes per experiment)."""
    summary = aggregate(df, pool, repeats)
    diffs, notes = [], {}
    students = df[df["k"] > 0]
    for exp, runs in students.groupby("experiment", sort=True) if len(students) else []:
        notes[exp] = _dead_counts(summary, exp, runs)
        exp_pool = tuple(sorted(pool if pool is not None else {t for ts in runs["teachers"] for t in ts}))
        r = repeats if repeats is not None else int(runs["seed"].nunique())
        got = experiment_intervals(runs, str(runs["metric_name"].iloc[0]), exp_pool, r, n_resamples, seed)
        if isinstance(got, str):
            notes[exp].append(f"no confidence intervals: {got}")
            continue
        at = summary.index[summary["experiment"] == exp]
        ci = got.per_k.set_index("k").reindex(summary.loc[at, "k"].to_numpy())
        for col in ci.columns:
            summary.loc[at, col] = ci[col].to_numpy()
        summary.loc[at, "eval_examples"] = got.eval_examples
        diffs.append(got.differences.assign(experiment=exp))
        notes[exp].insert(0, f"evaluation set: {got.eval_examples} examples: one example = "
                             f"{100 / got.eval_examples:.3g} points of accuracy; intervals: 95%, paired bootstrap "
                             f"over the examples ({n_resamples} resamples)")
    columns = ["experiment", "k", "difference", "estimate", "ci_low", "ci_high", "p_positive"]
    differences = pd.concat(diffs, ignore_index=True)[columns] if diffs else pd.DataFrame(columns=columns)
    return summary, differences, notes


def _dead_counts(summary: pd.DataFrame, exp: str, runs: pd.DataFrame) -> list[str]:
    """Dead runs per mode and k, into the summary; a note when there are any."""
    at = summary.index[summary["experiment"] == exp]
    if "dead" not in runs or runs["dead"].isna().all():
        return []
    dead = runs["dead"].fillna(False).astype(bool)
    sizes = runs["k"].to_numpy()
    single = int((dead & (sizes == 1)).sum())
    for i in at:
        k = int(summary.loc[i, "k"])
        summary.loc[i, "multi_dead"], summary.loc[i, "single_dead"] = int((dead & (sizes == k)).sum()), single
    n = int(dead.sum())
    return [f"{n} dead runs (one class predicted, or no better than the majority class): "
            f"{single} single-teacher; see runs.md"] if n else []


def write_report(df: pd.DataFrame, out_dir: str | os.PathLike, reference_lines: dict[str, float] | None = None,
                 pool: Iterable[int] | None = None, repeats: int | None = None,
                 shared_costs: dict[str, dict[str, float | None]] | None = None, n_resamples: int = N_RESAMPLES,
                 seed: int = 0, experiment_lines: dict[str, dict[str, float]] | None = None,
                 experiment_costs: dict[str, dict[str, dict[str, float | None]]] | None = None,
                 forward: dict[str, tuple[float | None, float | None, int | None]] | None = None) -> list[Path]:
    """Tables (CSV, markdown) of every run, the per-k summary, the differences and costs, and the figures.

    ``reference_lines`` (label -> score) are drawn on every figure, ``experiment_lines`` (experiment ->
    label -> score) on that experiment's, e.g. the teacher ensemble's dev score; the CE-only students'
    mean is added from the experiment's k = 0 runs unless a line already has its label.
    ``experiment_costs`` (experiment -> name -> cost), else ``shared_costs``, are amortised over the
    experiment's runs. ``forward`` (store path -> one teacher inference's seconds and joules per example, and
    the store's training examples)
    prices the online-equivalent cost of cached runs (``costs.run_costs``). Returns the files written.
    """
    out = Path(out_dir)
    if "experiment" not in df:
        df = df.assign(experiment=UNASSIGNED)
    if len(df):
        shared = experiment_costs or {e: shared_costs or {} for e in set(df["experiment"])}
        df = run_costs(df, shared, forward)
    summary, differences, notes = summarize(df, pool, repeats, n_resamples, seed)
    titles = experiment_titles(df)
    costs = [cost_summary(runs, (experiment_costs or {}).get(exp, shared_costs)).assign(experiment=exp)
             for exp, runs in df.groupby("experiment", sort=True)] if len(df) else [cost_summary(df, None)]
    cost = pd.concat(costs, ignore_index=True)
    tables = {"runs": _runs_table(df), "summary": summary, "cost": cost}
    if len(differences):
        tables["differences"] = differences
    written = []
    for name, table in tables.items():
        written.append(_write_text(out / f"{name}.csv", table.to_csv(index=False)))
        md = _summary_markdown(summary, titles, notes) if name == "summary" else \
            _cost_markdown(table, summary, titles) if name == "cost" else _markdown(table)
        written.append(_write_text(out / f"{name}.md", md))
    several = summary.groupby(["task", "student"])["experiment"].nunique() > 1
    for (exp, task, student), per_k in summary.groupby(["experiment", "task", "student"], sort=True):
        lines = {**(reference_lines or {}), **(experiment_lines or {}).get(exp, {})}
        baselines = df[(df["k"] == 0) & (df["experiment"] == exp)]
        if len(baselines) and CE_ONLY_LABEL not in lines:
            lines[CE_ONLY_LABEL] = float(baselines["metric"].mean())
        stem = f"{slug(task)}_{slug(student)}" + \
            (f"_{exp[:8]}" if several.get((task, student), False) else "")  # one file name, whatever the names
        written += figures(per_k.assign(title=titles.get(exp, "")), out / stem, lines)
    log.info("report: %d files in %s", len(written), out)
    return written


def experiment_titles(df: pd.DataFrame) -> dict[str, str]:
    """Per experiment, what sets it apart from the others of its task and student (``temperature=2``)."""
    identities = df.attrs.get("experiments", {})
    titles = {}
    for _, group in df.groupby(["task", "student"]):
        exps = sorted(set(group["experiment"]))
        if len(exps) < 2:
            continue
        flat = {e: _flatten(identities.get(e) or {}) for e in exps}
        keys = sorted({k for f in flat.values() for k in f})
        differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
        for e in exps:
            if e == UNASSIGNED:
                titles[e] = "runs without a recorded configuration (not pooled with any experiment)"
                continue
            titles[e] = ", ".join(f"{k}={_short(flat[e].get(k))}" for k in differ) or "(identical settings)"
    return titles


def _flatten(identity: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in identity.items() if k not in ("recipe", "task", "student")}
    flat.update(identity.get("recipe") or {})
    return flat


def _short(v: Any) -> str:
    if isinstance(v, list) and all(isinstance(x, str) and len(x) == 64 for x in v):
        return "[" + ",".join(x[:8] for x in v) + "]"  # store fingerprints, teacher hashes
    return json.dumps(v) if not isinstance(v, str) else v


def _runs_table(df: pd.DataFrame) -> pd.DataFrame:
    table = df.copy()
    table["teachers"] = [",".join(map(str, t)) for t in table["teachers"]]
    return table.sort_values(["task", "student", "k", "teachers", "primary", "seed"], kind="stable")


def _summary_markdown(summary: pd.DataFrame, titles: dict[str, str], notes: dict[str, list[str]]) -> str:
    """Per experiment a short table: each mode's worst and best case per k, mean ± std [95% CI], then its notes."""
    parts = []
    for exp, per_k in summary.groupby("experiment", sort=True):
        if exp in titles:
            parts.append(f"## {per_k['task'].iloc[0]} / {per_k['student'].iloc[0]}, experiment {exp[:8]}: "
                         f"{titles[exp]}\n")
        rows = [{"task": r["task"], "student": r["student"], "k": int(r["k"]), "combos": int(r["n_combinations"]),
                 **{READABLE[c]: _cell(r, c) for c in CURVES if c in READABLE}} for _, r in per_k.iterrows()]
        text = _markdown(pd.DataFrame(rows))
        lines = notes.get(exp, [])
        parts.append(text + ("\n" + "\n".join(f"- {n}" for n in lines) + "\n" if lines else ""))
    return "\n".join(parts) if parts else _markdown(pd.DataFrame(columns=["task", "student", "k"]))


def _cost_markdown(cost: pd.DataFrame, summary: pd.DataFrame, titles: dict[str, str]) -> str:
    """Per experiment: what everything cost (the store's total and the online-equivalent), then per k each
    mode's cost per combination on both axes (seconds; the runs its worst and best are taken over)."""
    parts: list[str] = []
    for exp, rows in cost.groupby("experiment", sort=True) if "experiment" in cost else ():
        per_k = summary[summary["experiment"] == exp]
        head = f"{per_k['task'].iloc[0]} / {per_k['student'].iloc[0]}, " if len(per_k) else ""
        parts.append(f"## {head}experiment {exp[:8]}" + (f": {titles[exp]}" if exp in titles else "") + "\n")
        parts.append(_markdown(rows.drop(columns=["experiment"])))
        if len(per_k) and "multi_cached_s_mean" in per_k:
            table = pd.DataFrame({"k": per_k["k"].astype(int),
                                  **{f"{m}-teacher {axis} (s)": per_k[f"{m}_{axis}_s_mean"]
                                     for axis in ("cached", "online") for m in ("multi", "single")}})
            parts.append("Per combination, mean over combinations: *cached* = the students' time plus their "
                         "shares of the teachers, the dump and stage 1; *online* = the same runs with their k "
                         "teachers inside (the paper's axis; measured for --online runs, else estimated from "
                         "the dump's teacher throughput).\n")
            parts.append(_markdown(table))
    return "\n".join(parts) if parts else _markdown(cost)


def _cell(row: pd.Series, curve: str) -> str:
    mean, std = row[f"{curve}_mean"], row[f"{curve}_std"]
    low, high = row.get(f"{curve}_ci_low", np.nan), row.get(f"{curve}_ci_high", np.nan)
    if pd.isna(mean):
        return ""
    text = f"{mean:.4f} ±{std:.4f}"
    return text + (f" [{low:.4f}, {high:.4f}]" if pd.notna(low) else "")


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency); floats to 4 significant digits."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return "" if v is None or v is pd.NA else str(v)
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def make_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike, repeats: int | None = None,
                experiment: str | None = None, n_resamples: int = N_RESAMPLES) -> list[Path]:
    """``mtd-report``: the records under ``runs_dir``, with reference lines and costs from their stores.

    Per experiment, the teacher ensemble's dev score (all teachers' dev logits averaged) is a reference
    line, and the teachers' training cost and the dump's are shared costs. ``experiment``: only the
    experiment whose id starts with it.
    """
    df = load_records(runs_dir)
    if df.empty:
        raise MtdError(f"no finished run records under {runs_dir}")
    if experiment:
        chosen = sorted({e for e in df["experiment"] if e.startswith(experiment)})
        if len(chosen) != 1:
            known = ", ".join(sorted({e[:8] for e in df["experiment"]}))
            raise MtdError(f"--experiment {experiment!r} matches {len(chosen)} experiments; known: {known}")
        df = df[df["experiment"] == chosen[0]]
    lines, shared, forward = {}, {}, {}
    for exp, runs in df.groupby("experiment"):
        lines[exp], shared[exp], teacher_sets = {}, {}, set()
        for store_path in sorted(set(runs["store"].dropna())) if "store" in runs else []:
            ref, costs, forward[store_path], teachers = _store_reference(Path(store_path))
            lines[exp].update(ref)
            if teachers in teacher_sets:  # R repeat stores of the same teachers: trained once, counted once
                costs.pop("teachers", None)
            teacher_sets.add(teachers)
            for name, c in costs.items():
                acc = shared[exp].setdefault(name, {"wall_s": 0.0, "energy_j": 0.0})
                acc["wall_s"] = (acc["wall_s"] or 0.0) + (c["wall_s"] or 0.0)
                known = acc["energy_j"] is not None and c["energy_j"] is not None
                acc["energy_j"] = acc["energy_j"] + c["energy_j"] if known else None
    unknown = sorted(p for p, (rate, _, _) in forward.items() if rate is None)
    if unknown:
        log.warning("%s: no teacher throughput recorded (dumped before it was, or gone): online-equivalent costs "
                    "unknown (dump the teachers into a new store, or sweep with --online-teachers-dir for measured "
                    "ones)", ", ".join(unknown))
    return write_report(df, out_dir, repeats=repeats, n_resamples=n_resamples, experiment_lines=lines,
                        experiment_costs=shared, forward=forward)


def _store_reference(path: Path) -> tuple[dict[str, float], dict[str, dict[str, float | None]],
                                          tuple[float | None, float | None, int | None], tuple[str, ...]]:
    """The store's reference lines, its dump's (and its teachers') cost, its teacher throughput (seconds, joules
    per example) with its training-example count, and its teachers' hashes."""
    from ..store import TeacherStore
    from ..tasks.registry import task_of_store

    if not path.exists():
        log.warning("store %s of some records is gone: no ensemble line or teacher costs from it", path)
        return {}, {}, (None, None, None), ()
    with TeacherStore.open(path, check_finite=False) as s:
        lines = {}
        if s.dev_logits is not None and len(s.dev_logits):
            try:
                ensemble = task_of_store(s).score(s.mean_dev_logits(), s.dev_labels)
                lines[f"teacher ensemble ({s.num_teachers}, dev)"] = ensemble
            except MtdError as exc:  # a store of logits only: no task to score with
                log.warning("no teacher-ensemble line from %s: %s", path, exc)
        costs = {"dump": {"wall_s": s.dump_wall_s, "energy_j": s.dump_energy_j}}
        teachers = [_teacher_info(Path(p)) for p in s.teacher_paths]
        forward = (s.teacher_forward_s, s.teacher_forward_j, int(s.num_examples))
        hashes = tuple(s.teachers_sha256)
    if teachers and all(t is not None for t in teachers):
        known = all(t.get("energy_j") is not None for t in teachers)
        costs["teachers"] = {"wall_s": math.fsum(t.get("wall_s") or 0.0 for t in teachers),
                             "energy_j": math.fsum(t["energy_j"] for t in teachers) if known else None}
    return lines, costs, forward, hashes


def _teacher_info(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "teacher.json").read_text())
    except (OSError, ValueError):
        return None
