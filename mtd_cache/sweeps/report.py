"""The report: tables and the paper's figures from a folder of run records, per experiment, never across.

Files (``mtd-report RUNS --out DIR``): ``runs.csv``/``.md`` every run (its experiment, dead runs
marked), ``summary.csv`` the full per-k table of every experiment (means, stds, 95% intervals),
``summary.md`` a short readable table per experiment with the evaluation set's granularity,
``differences.csv``/``.md`` the modes' paired differences per k with their intervals (when the runs
kept their predictions), ``cost.csv``/``.md`` (the store's cost and the online-equivalent, per mode and k),
and per experiment the four figures ``<task>_<student>[_<experiment>]_<name>.png``, ``<name>`` one of
``score_vs_k``, ``score_vs_online_time`` (the paper's figs 4, 5, 7), ``score_vs_cached_time`` (the store's)
and ``equal_effort_vs_k`` (the experiment's id in the name only when a task and student have several);
``agreement.md`` what each store's teachers agree on (``tasks.agreement``), and ``rules.csv``/``.md`` when
experiments differ only in their KD rule (``rules.py``: each rule beside mean_logits, paired).
Aggregation: ``aggregate.py``; intervals: ``uncertainty.py``; records: ``records.py``; costs: ``costs.py``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.errors import MtdError
from ..core.safe_files import atomic_path
from ..models.factory import slug
from ..tasks.agreement import agreement_lines
from .aggregate import VARIANTS
from .costs import Shared, cost_summary, experiment_costs_markdown, run_costs, shared_table
from .figures import display_name, figures
from .records import UNASSIGNED, load_records
from .resources import from_stores
from .rules import RULE_KEYS, compare_rules, rule_of, rules_markdown, share_single_runs
from .summary import summarize
from .tables import DEFINITIONS, differences_markdown, experiment_markdown, markdown
from .uncertainty import N_RESAMPLES

__all__ = ["make_report", "summarize", "write_report"]

log = logging.getLogger(__name__)

CE_ONLY_LABEL = "CE-only students (mean)"


def write_report(df: pd.DataFrame, out_dir: str | os.PathLike, reference_lines: dict[str, float] | None = None,
                 pool: Iterable[int] | None = None, repeats: int | None = None, shared: Shared | None = None,
                 n_resamples: int = N_RESAMPLES, seed: int = 0,
                 experiment_lines: dict[str, dict[str, float]] | None = None) -> list[Path]:
    """Tables (CSV, markdown) of every run, the per-k summary, the differences and costs, and the figures.

    ``reference_lines`` (label -> score) are drawn on every figure, ``experiment_lines`` (experiment ->
    label -> score) on that experiment's, e.g. the teacher ensemble's dev score; the CE-only students'
    mean is added from the experiment's k = 0 runs unless a line already has its label. ``shared``: what
    the runs share (teachers, dumps, teacher rates; ``resources.from_stores``), each charged once to the
    runs that used it (``costs.run_costs``). Returns the files written.
    """
    out = Path(out_dir)
    shared = shared or Shared()
    if "experiment" not in df:
        df = df.assign(experiment=UNASSIGNED)
    df = share_single_runs(df)  # a rules sweep's k <= 1 runs, in every rule's experiment
    if len(df) and "cached_s" not in df:  # else priced already (over a whole folder, by ``make_report``)
        df = run_costs(df, shared)
    summary, differences, notes = summarize(df, pool, repeats, n_resamples, seed)
    titles = experiment_titles(df)
    costs = [cost_summary(runs).assign(experiment=exp) for exp, runs in df.groupby("experiment", sort=True)] \
        if len(df) else [cost_summary(run_costs(df))]
    tables = {"runs": _runs_table(df), "summary": summary, "differences": differences,
              "cost": pd.concat(costs, ignore_index=True)}
    main = summary[summary["variant"] == VARIANTS[0]]  # the figures and costs: every run
    written = []
    if "shared_from" in df:
        for exp, runs in df[df["shared_from"].notna()].groupby("experiment"):
            notes.setdefault(exp, []).append(
                f"its k = 1 and CE-only runs ({len(runs)}) are experiment {runs['shared_from'].iloc[0][:8]}'s: the "
                "same runs under every rule, trained once (mtd-sweep --rules)")
    if any(shared.agreement.values()):
        written.append(_write_text(out / "agreement.md", _agreement_markdown(shared.agreement)))
        _agreement_notes(df, shared, notes)
    for name, table in tables.items():
        written.append(_write_text(out / f"{name}.csv", table.to_csv(index=False)))
        md = _summary_markdown(summary, differences, titles, notes, df[df["k"] == 0]) if name == "summary" else \
            _cost_markdown(table, df, main, titles, shared) if name == "cost" else \
            differences_markdown(table, titles, _metrics(df)) if name == "differences" else markdown(table)
        written.append(_write_text(out / f"{name}.md", md))
    rules = compare_rules(df, n_resamples, seed)
    if len(rules):
        written.append(_write_text(out / "rules.csv", rules.to_csv(index=False)))
        written.append(_write_text(out / "rules.md", rules_markdown(rules)))
    several = summary.groupby(["task", "student"])["experiment"].nunique() > 1
    for (exp, task, student), per_k in main.groupby(["experiment", "task", "student"], sort=True):
        if not per_k["n_combinations"].gt(0).any():  # nothing to compare: say so in summary.md, draw nothing
            continue
        lines = {**(reference_lines or {}), **(experiment_lines or {}).get(exp, {})}
        baselines = df[(df["k"] == 0) & (df["experiment"] == exp)]
        if len(baselines) and CE_ONLY_LABEL not in lines:
            lines[CE_ONLY_LABEL] = float(baselines["metric"].mean())
        stem = f"{slug(task)}_{slug(student)}" + \
            (f"_{exp[:8]}" if several.get((task, student), False) else "")  # one file name, whatever the names
        exp_diffs = differences[(differences["experiment"] == exp) & (differences["variant"] == VARIANTS[0])]
        written += figures(per_k.assign(title=titles.get(exp, "")), out / stem, lines, exp_diffs)
    log.info("report: %d files in %s", len(written), out)
    return written


def _metrics(df: pd.DataFrame) -> dict[str, str]:
    """Each experiment's metric name."""
    return {str(e): str(m) for e, m in df.groupby("experiment")["metric_name"].first().items()} if len(df) else {}


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
            elif differ and set(differ) <= set(RULE_KEYS):  # rule siblings: named by their rule
                titles[e] = f"kd_rule={rule_of(identities.get(e) or {})}"
            else:
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


def _agreement_notes(df: pd.DataFrame, shared: Shared, notes: dict[str, list[str]]) -> None:
    """Each experiment's note on its stores' teachers: how much they agree, what their ensemble gains."""
    for exp, runs in df.groupby("experiment", sort=True):
        for store in sorted(set(runs["store"].dropna())) if "store" in runs else []:
            a = shared.agreement.get(store)
            if a:
                notes.setdefault(exp, []).append(
                    f"teachers of {Path(store).name}: mean pairwise agreement {a['mean_agreement']:.4f} on dev; the "
                    f"all-teacher ensemble {a['gain']['mean_logits']:+.4f} over the mean teacher (agreement.md)")


def _agreement_markdown(stats: dict[str, dict | None]) -> str:
    parts = ["# What the teachers agree on\n\nPer store, from its dev logits (`tasks/agreement.py`): each teacher's "
             "dev score and calibration (ECE), how often two teachers' top classes agree, and every k-ensemble's dev "
             "score (mean over the k-subsets, [worst, best]).\n"]
    for store, a in sorted(stats.items()):
        if a:
            parts.append(f"\n## {store}\n\n```\n" + "\n".join(agreement_lines(a)) + "\n```\n")
    return "".join(parts)


def _runs_table(df: pd.DataFrame) -> pd.DataFrame:
    table = df.copy()
    table["teachers"] = [",".join(map(str, t)) for t in table["teachers"]]
    return table.sort_values(["task", "student", "k", "teachers", "primary", "seed"], kind="stable")


def _summary_markdown(summary: pd.DataFrame, diffs: pd.DataFrame, titles: dict[str, str], notes: dict[str, list[str]],
                      baselines: pd.DataFrame) -> str:
    """``summary.md``: what the numbers are, then per experiment equal effort first (``tables``)."""
    parts = [DEFINITIONS]
    for exp, per_k in summary.groupby("experiment", sort=True):
        head = f"{per_k['task'].iloc[0]} / {display_name(per_k['student'].iloc[0])}, experiment {exp[:8]}"
        if exp in titles:
            head += f": {titles[exp]}"
        lines = list(notes.get(exp, []))
        ce = baselines[baselines["experiment"] == exp] if len(baselines) else baselines
        if len(ce):
            lines.append(f"CE-only students (k = 0, no teacher): {ce['metric'].mean():.4f} mean over {len(ce)} "
                         f"run{'s' if len(ce) > 1 else ''}")
        parts.append(experiment_markdown(head, per_k, diffs[diffs["experiment"] == exp] if len(diffs) else diffs,
                                         lines))
    return "\n".join(parts)


def _cost_markdown(cost: pd.DataFrame, df: pd.DataFrame, summary: pd.DataFrame, titles: dict[str, str],
                   shared: Shared) -> str:
    """``cost.md``: every shared cost once (with the runs that used it), then per experiment its components and
    both axes per k, how its online axis was priced, the estimate against its measured twin, its break-even."""
    parts = ["Each shared cost is charged once, in equal shares, to the runs of this folder that used it (the "
             "teachers' training to every run distilled from them, cached or online; a dump to the cached runs "
             "that read its store; a stage 1 to the runs that start from it). Both axes include the teachers' "
             "training.\n", markdown(shared_table(df, shared)) if len(df) else ""]
    for exp, rows in cost.groupby("experiment", sort=True) if "experiment" in cost else ():
        per_k = summary[summary["experiment"] == exp]
        head = f"{per_k['task'].iloc[0]} / {display_name(per_k['student'].iloc[0])}, " if len(per_k) else ""
        parts.append(f"## {head}experiment {exp[:8]}" + (f": {titles[exp]}" if exp in titles else "") + "\n")
        parts.append(markdown(rows.drop(columns=["experiment"])))
        runs = df[df["experiment"] == exp]
        twin_id = runs["twin_experiment"].dropna().iloc[0] if "twin_experiment" in runs and \
            runs["twin_experiment"].notna().any() else None
        twin = df[df["experiment"] == twin_id] if twin_id is not None else None
        parts.append(experiment_costs_markdown(runs, per_k, shared, twin))
    return "\n".join(parts) if len(parts) > 2 else markdown(cost)


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def make_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike, repeats: int | None = None,
                experiment: str | None = None, n_resamples: int = N_RESAMPLES) -> list[Path]:
    """``mtd-report``: the records under ``runs_dir``, with reference lines and costs from their stores
    (``resources.from_stores``). ``experiment``: only the experiment whose id starts with it."""
    df = load_records(runs_dir)
    if df.empty:
        raise MtdError(f"no finished run records under {runs_dir} (train students into it: mtd-train or mtd-sweep "
                       f"--out {runs_dir})")
    lines, shared = from_stores(df)
    if experiment:
        chosen = sorted({e for e in df["experiment"] if e.startswith(experiment)})
        if len(chosen) != 1:
            known = ", ".join(sorted({e[:8] for e in df["experiment"]}))
            raise MtdError(f"--experiment {experiment!r} matches {len(chosen)} experiments; known: {known}")
        df = run_costs(df, shared)  # each shared cost split over every run of the folder that used it
        df = df[df["experiment"] == chosen[0]]
    return write_report(df, out_dir, repeats=repeats, n_resamples=n_resamples, experiment_lines=lines, shared=shared)
