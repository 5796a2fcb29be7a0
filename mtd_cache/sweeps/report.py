"""Aggregation and figures from run records (DESIGN.md "Run record" and "Sweep protocol").

Choices, named once:

- **Finished runs only.** ``load_records`` keeps records whose ``status`` is
  ``"done"`` or ``"ok"``; other statuses (running, failed) are skipped with an
  info line, files that are not run records with a warning. A ``run_id`` seen
  twice (a copied file) is counted once.
- **Modes, per k-combination of the pool.** *Multi-teacher*: min and max over
  the runs whose teacher set equals the combination, whatever their primary
  and repeat. *Single-teacher*: min and max over the k = 1 runs of the
  combination's members. A combination enters a k's statistics only when both
  modes have runs for it, so the two modes are compared on the same combinations.
- **Population std** (``ddof=0``) over combinations: the C(T, k) combinations
  are the whole population, not a sample, and k = T (one combination) gets
  std 0 rather than NaN.
- **Equal effort**: the exact expected min and max of r = R runs drawn without
  replacement from each mode's runs (``expected_extremes``), R being the number
  of distinct seeds unless given. A combination where a mode has fewer than R
  runs is left out of the equal-effort columns (``eq_n_combinations``).
- **Distillation time** of a mode for a combination is the summed ``wall_s`` of
  the runs its min and max are taken over (what obtaining them cost); the
  figures plot it averaged over combinations. Stage-1 and teacher costs are in
  ``cost_summary``, not in this time.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MtdError
from ..utils import atomic_path
from .figures import MODES, figures

log = logging.getLogger(__name__)

REQUIRED = ("run_id", "task", "student", "teachers", "primary", "k", "seed", "metric_name", "metric",
            "wall_s", "energy_j", "status")
DONE_STATUSES = frozenset({"done", "ok"})
# per-combination statistics; each becomes <name>_mean and <name>_std in the summary
STATS = tuple(f"{m}_{s}" for m in MODES for s in ("min", "max", "n_runs", "time_s", "run_s")) + \
    tuple(f"eq_{m}_{s}" for m in MODES for s in ("min", "max"))
SUMMARY_COLUMNS = ["task", "student", "metric_name", "k", "n_expected", "n_combinations", "eq_r",
                   "eq_n_combinations"] + [f"{s}_{a}" for s in STATS for a in ("mean", "std")]
CE_ONLY_LABEL = "CE-only students (mean)"
_Run = tuple[float, float]  # (metric, wall_s)


def load_records(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """Every finished run record under ``runs_dir`` (recursive ``*.json``), one row each.

    ``teachers`` becomes a sorted tuple; ``energy_j`` NaN when unknown; nested
    fields (``config``) are left out of the frame.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in sorted(Path(runs_dir).rglob("*.json")):
        rec = _read_record(path)
        if rec is None:
            continue
        if rec.get("kind") == "stage1":
            log.debug("%s is a TinyBERT stage-1 run: a cost of the students that name it, not a result", path)
        elif rec["status"] not in DONE_STATUSES:
            log.info("skipping %s: status %r", path, rec["status"])
        elif rec["run_id"] in seen:
            log.warning("skipping %s: run %s already loaded", path, rec["run_id"])
        else:
            seen.add(rec["run_id"])
            rows.append(rec)
    log.info("loaded %d finished runs from %s", len(rows), runs_dir)
    extra = sorted({key for row in rows for key in row} - set(REQUIRED))
    df = pd.DataFrame(rows, columns=[*REQUIRED, *extra])
    return df.astype({"k": "int64", "seed": "int64", "primary": "Int64", "metric": "float64",
                      "wall_s": "float64", "energy_j": "float64"})


def _read_record(path: Path) -> dict[str, Any] | None:
    """The normalised record in ``path``, or None (with a warning) when it is not one."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: not readable JSON (%s)", path, exc)
        return None
    missing = [key for key in REQUIRED if key not in rec] if isinstance(rec, dict) else list(REQUIRED)
    if missing:
        log.warning("skipping %s: not a run record (missing %s)", path, ", ".join(missing))
        return None
    try:
        return _normalise(rec, path)
    except (TypeError, ValueError) as exc:
        log.warning("skipping %s: malformed run record (%s)", path, exc)
        return None


def _normalise(rec: dict[str, Any], path: Path) -> dict[str, Any]:
    out = {key: v for key, v in rec.items() if not isinstance(v, (dict, list))}
    teachers = tuple(sorted(int(t) for t in rec["teachers"]))
    if len(teachers) != int(rec["k"]):
        raise ValueError(f"k = {rec['k']} but {len(teachers)} teachers")
    out.update(teachers=teachers, k=int(rec["k"]), seed=int(rec["seed"]), metric=float(rec["metric"]),
               wall_s=float(rec["wall_s"]), path=str(path),
               primary=None if rec["primary"] is None else int(rec["primary"]),
               energy_j=math.nan if rec["energy_j"] is None else float(rec["energy_j"]))
    return out


def expected_extremes(values: Sequence[float], r: int) -> tuple[float, float]:
    """Exact (E[min], E[max]) of ``r`` values drawn without replacement from ``values``.

    Order statistics over all C(n, r) subsets, with x_(1) <= ... <= x_(n):
    x_(i) is a subset's minimum in C(n-i, r-1) subsets and its maximum in
    C(i-1, r-1), so E[min] = sum_i x_(i) C(n-i, r-1) / C(n, r) and
    E[max] = sum_i x_(i) C(i-1, r-1) / C(n, r). Ties need no care.
    """
    x = sorted(float(v) for v in values)
    n = len(x)
    if not 1 <= r <= n:
        raise ValueError(f"cannot draw r = {r} of {n} values")
    if any(math.isnan(v) for v in x):
        raise ValueError("values contain NaN")
    total = comb(n, r)
    e_min = math.fsum(v * comb(n - i, r - 1) for i, v in enumerate(x, 1)) / total
    e_max = math.fsum(v * comb(i - 1, r - 1) for i, v in enumerate(x, 1)) / total
    return e_min, e_max


def aggregate(df: pd.DataFrame, pool: Iterable[int] | None = None, repeats: int | None = None) -> pd.DataFrame:
    """Per (task, student, k): both modes' min and max, time and equal-effort values, mean and std
    over the k-combinations of ``pool`` (default: every teacher in the runs). Columns: SUMMARY_COLUMNS."""
    parts = []
    students = df[df["k"] > 0]
    for (task, student, metric_name), runs in students.groupby(["task", "student", "metric_name"], sort=True):
        summary = _aggregate_runs(runs, pool, repeats)
        summary.insert(0, "metric_name", metric_name)
        summary.insert(0, "student", student)
        summary.insert(0, "task", task)
        parts.append(summary)
    if not parts:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return pd.concat(parts, ignore_index=True)[SUMMARY_COLUMNS]


def _aggregate_runs(runs: pd.DataFrame, pool: Iterable[int] | None, repeats: int | None) -> pd.DataFrame:
    """The per-k summary of one student's runs."""
    pool = tuple(sorted(pool if pool is not None else {t for ts in runs["teachers"] for t in ts}))
    r = repeats if repeats is not None else int(runs["seed"].nunique())
    by_set: dict[tuple[int, ...], list[_Run]] = defaultdict(list)
    for teachers, metric, wall in zip(runs["teachers"], runs["metric"], runs["wall_s"], strict=True):
        if set(teachers) <= set(pool):
            by_set[teachers].append((metric, wall))
    rows = []
    for k in range(1, len(pool) + 1):
        stats = [s for c in combinations(pool, k) if (s := _combination_stats(c, by_set, r)) is not None]
        if len(stats) < comb(len(pool), k):
            log.warning("%s k=%d: %d of %d combinations have runs in both modes",
                        runs["student"].iloc[0], k, len(stats), comb(len(pool), k))
        rows.append(_k_row(k, comb(len(pool), k), r, stats))
    return pd.DataFrame(rows)


def _combination_stats(combo: tuple[int, ...], by_set: dict[tuple[int, ...], list[_Run]],
                       r: int) -> dict[str, float] | None:
    """Both modes' statistics for one combination; None when a mode has no runs for it."""
    singles = [by_set.get((t,), []) for t in combo]
    mode_runs = {"multi": by_set.get(combo, []), "single": [run for s in singles for run in s]}
    if not mode_runs["multi"] or not all(singles):
        return None
    out: dict[str, float] = {}
    for mode, mode_list in mode_runs.items():
        metric, wall = np.array(mode_list, dtype=float).T
        out.update({f"{mode}_min": metric.min(), f"{mode}_max": metric.max(), f"{mode}_n_runs": len(metric),
                    f"{mode}_time_s": wall.sum(), f"{mode}_run_s": wall.mean()})
    enough = all(len(runs) >= r for runs in mode_runs.values())
    for mode, mode_list in mode_runs.items():
        lo, hi = expected_extremes([m for m, _ in mode_list], r) if enough else (math.nan, math.nan)
        out.update({f"eq_{mode}_min": lo, f"eq_{mode}_max": hi})
    return out


def _k_row(k: int, n_expected: int, r: int, stats: list[dict[str, float]]) -> dict[str, float]:
    """Mean and population std over the combinations of every statistic (NaNs left out)."""
    row: dict[str, float] = {"k": k, "n_expected": n_expected, "n_combinations": len(stats), "eq_r": r,
                             "eq_n_combinations": sum(not math.isnan(s["eq_multi_min"]) for s in stats)}
    for name in STATS:
        vals = np.array([s[name] for s in stats], dtype=float)
        vals = vals[~np.isnan(vals)]
        row[f"{name}_mean"] = float(vals.mean()) if len(vals) else math.nan
        row[f"{name}_std"] = float(vals.std(ddof=0)) if len(vals) else math.nan
    return row


def cost_summary(df: pd.DataFrame, shared: dict[str, dict[str, float | None]] | None = None,
                 stage1: dict[str, dict[str, float | None]] | None = None) -> pd.DataFrame:
    """Total and per-run cost (wall seconds, joules) of the runs in ``df`` and what they share.

    ``shared`` maps a name (``"teachers"``, ``"dump"``) to its total ``wall_s`` and
    ``energy_j``; each is amortised over every run in ``df`` (they all read the
    same teachers and store). ``stage1`` maps a ``stage1_id`` to its cost,
    amortised over the runs naming it; without it the records' ``stage1_wall_s``
    is used (energy unknown). Unknown energy stays NaN: never a partial sum.
    Columns: component, wall_s, energy_j, n_runs, per_run_wall_s, per_run_energy_j.
    """
    n = len(df)
    rows = [_cost_row("students", df["wall_s"].sum(), _sum_or_nan(df["energy_j"]), n)]
    rows += [_cost_row(name, c.get("wall_s"), c.get("energy_j"), n) for name, c in (shared or {}).items()]
    if "stage1_id" in df.columns and df["stage1_id"].notna().any():
        rows.append(_stage1_row(df[df["stage1_id"].notna()], stage1))
    total_wall = math.fsum(row["wall_s"] for row in rows)
    total_energy = _sum_or_nan(pd.Series([row["energy_j"] for row in rows], dtype=float))
    rows.append(_cost_row("total", total_wall, total_energy, n))
    return pd.DataFrame(rows)


def _stage1_row(runs: pd.DataFrame, stage1: dict[str, dict[str, float | None]] | None) -> dict[str, Any]:
    ids = sorted(set(runs["stage1_id"]))
    if stage1 is not None:
        wall = [stage1.get(i, {}).get("wall_s") for i in ids]
        energy = [stage1.get(i, {}).get("energy_j") for i in ids]
    else:
        first = runs.groupby("stage1_id").first()
        wall = [first["stage1_wall_s"].get(i) if "stage1_wall_s" in first else None for i in ids]
        energy = [None] * len(ids)
    return _cost_row("stage1", _sum_or_nan(pd.Series(wall, dtype=float)),
                     _sum_or_nan(pd.Series(energy, dtype=float)), len(runs))


def _cost_row(name: str, wall_s: float | None, energy_j: float | None, n_runs: int) -> dict[str, Any]:
    wall = math.nan if wall_s is None else float(wall_s)
    energy = math.nan if energy_j is None else float(energy_j)
    return {"component": name, "wall_s": wall, "energy_j": energy, "n_runs": n_runs,
            "per_run_wall_s": wall / n_runs if n_runs else math.nan,
            "per_run_energy_j": energy / n_runs if n_runs else math.nan}


def _sum_or_nan(values: pd.Series) -> float:
    """The sum, or NaN when any value is unknown (a partial sum would pass for the total)."""
    return math.nan if values.isna().any() else float(values.sum())


def write_report(df: pd.DataFrame, out_dir: str | os.PathLike, reference_lines: dict[str, float] | None = None,
                 pool: Iterable[int] | None = None, repeats: int | None = None,
                 shared_costs: dict[str, dict[str, float | None]] | None = None) -> list[Path]:
    """Tables (CSV, markdown) of every run, the per-k summary and the costs, and the figures.

    ``reference_lines`` (label -> score) are drawn on every figure, e.g. the
    teacher ensemble's dev score; the CE-only students' mean is added from the
    k = 0 runs unless a line already has its label. Returns the files written.
    """
    out = Path(out_dir)
    summary = aggregate(df, pool, repeats)
    tables = {"runs": _runs_table(df), "summary": summary, "cost": cost_summary(df, shared_costs)}
    written = []
    for name, table in tables.items():
        written.append(_write_text(out / f"{name}.csv", table.to_csv(index=False)))
        written.append(_write_text(out / f"{name}.md", _markdown(table)))
    for (task, student), per_k in summary.groupby(["task", "student"], sort=True):
        lines = dict(reference_lines or {})
        baselines = df[(df["k"] == 0) & (df["task"] == task) & (df["student"] == student)]
        if len(baselines) and CE_ONLY_LABEL not in lines:
            lines[CE_ONLY_LABEL] = float(baselines["metric"].mean())
        written += figures(per_k, out / f"{task}_{student}", lines)
    log.info("report: %d files in %s", len(written), out)
    return written


def _runs_table(df: pd.DataFrame) -> pd.DataFrame:
    table = df.copy()
    table["teachers"] = [",".join(map(str, t)) for t in table["teachers"]]
    return table.sort_values(["task", "student", "k", "teachers", "primary", "seed"], kind="stable")


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


def make_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike, repeats: int | None = None) -> list[Path]:
    """``mtd-report``: the records under ``runs_dir``, with reference lines and costs from their stores.

    The teacher ensemble's dev score (all teachers' dev logits averaged) is a
    reference line; the teachers' training cost and the dump's are shared costs.
    """
    df = load_records(runs_dir)
    if df.empty:
        raise MtdError(f"no finished run records under {runs_dir}")
    lines: dict[str, float] = {}
    shared: dict[str, dict[str, float | None]] = {}
    for store_path in sorted(set(df["store"].dropna())) if "store" in df else []:
        ref, costs = _store_reference(Path(store_path))
        lines.update(ref)
        for name, c in costs.items():
            acc = shared.setdefault(name, {"wall_s": 0.0, "energy_j": 0.0})
            acc["wall_s"] = (acc["wall_s"] or 0.0) + (c["wall_s"] or 0.0)
            known = acc["energy_j"] is not None and c["energy_j"] is not None
            acc["energy_j"] = acc["energy_j"] + c["energy_j"] if known else None
    return write_report(df, out_dir, lines, repeats=repeats, shared_costs=shared)


def _store_reference(path: Path) -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
    from ..store import TeacherStore
    from ..tasks.registry import score

    if not path.exists():
        log.warning("store %s of some records is gone: no ensemble line or teacher costs from it", path)
        return {}, {}
    with TeacherStore.open(path, check_finite=False) as s:
        lines = {}
        if s.dev_logits is not None and len(s.dev_logits):
            lines[f"teacher ensemble ({s.num_teachers}, dev)"] = score(s.task, s.mean_dev_logits(), s.dev_labels)
        costs = {"dump": {"wall_s": s.dump_wall_s, "energy_j": s.dump_energy_j}}
        teachers = [_teacher_info(Path(p)) for p in s.teacher_paths]
    if teachers and all(t is not None for t in teachers):
        known = all(t.get("energy_j") is not None for t in teachers)
        costs["teachers"] = {"wall_s": math.fsum(t.get("wall_s") or 0.0 for t in teachers),
                             "energy_j": math.fsum(t["energy_j"] for t in teachers) if known else None}
    return lines, costs


def _teacher_info(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "teacher.json").read_text())
    except (OSError, ValueError):
        return None
