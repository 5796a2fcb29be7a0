"""What a sweep cost: the students' runs, and what they share (teachers, the dump, TinyBERT's stage 1), amortised."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


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
