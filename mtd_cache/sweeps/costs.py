"""What a sweep cost: the students' runs, and what they share (teachers, the dump, TinyBERT's stage 1), amortised."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def cost_summary(df: pd.DataFrame, shared: dict[str, dict[str, float | None]] | None = None,
                 stage1: dict[str, dict[str, float | None]] | None = None) -> pd.DataFrame:
    """Total and per-run cost (wall seconds, joules) of the runs in ``df`` and what they share.

    ``shared`` maps a name (``"teachers"``, ``"dump"``) to its total ``wall_s`` and
    ``energy_j``; each is amortised over every run in ``df`` (they all read the
    same teachers and store). ``stage1`` maps a ``stage1_id`` to its cost,
    amortised over the runs naming it; without it the records' ``stage1_wall_s``
    is used (energy unknown). Unknown energy stays NaN: never a partial sum.
    With ``run_costs``' columns in ``df``: "online: teacher inference" (what running the k teachers inside
    every run would add) and "total online-equivalent" (the paper's cost of the same runs; ``total`` is the
    store's). Columns: component, wall_s, energy_j, n_runs, per_run_wall_s, per_run_energy_j.
    """
    n = len(df)
    rows = [_cost_row("students", df["wall_s"].sum(), _sum_or_nan(df["energy_j"]), n)]
    rows += [_cost_row(name, c.get("wall_s"), c.get("energy_j"), n) for name, c in (shared or {}).items()]
    if "stage1_id" in df.columns and df["stage1_id"].notna().any():
        rows.append(_stage1_row(df[df["stage1_id"].notna()], stage1))
    total_wall = math.fsum(row["wall_s"] for row in rows)
    total_energy = _sum_or_nan(pd.Series([row["energy_j"] for row in rows], dtype=float))
    rows.append(_cost_row("total", total_wall, total_energy, n))
    if "online_s" in df:  # the paper's axis: every run with its k teachers inside (``run_costs``)
        stage = next((r for r in rows if r["component"] == "stage1"), {"wall_s": 0.0, "energy_j": 0.0})
        online_s, online_j = _sum_or_nan(df["online_s"]), _sum_or_nan(df["online_j"])
        rows.append(_cost_row("online: teacher inference", online_s - rows[0]["wall_s"] - stage["wall_s"],
                              online_j - rows[0]["energy_j"] - stage["energy_j"], n))
        rows.append(_cost_row("total online-equivalent", online_s, online_j, n))
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


# ----------------------------------------------------------------------------- per run: the two cost axes


def run_costs(df: pd.DataFrame, shared: dict[str, dict[str, dict[str, float | None]]] | None = None,
              forward: dict[str, tuple[float | None, float | None, int | None]] | None = None) -> pd.DataFrame:
    """``df`` with each run's cost on the two axes the report plots, in seconds and joules.

    * ``cached_s`` / ``cached_j`` (the store's): the run's own cost, plus its share of what its experiment's
      runs share (``shared``: experiment -> teachers, dump), amortised over the experiment's runs, plus its
      share of its TinyBERT stage 1, amortised over the runs that name it.
    * ``online_s`` / ``online_j`` (the paper's, k teachers inside every run): a run made with ``--online`` is
      its own measured cost; a cached run's is the measured cost of its online twin (the same run of the same
      experiment with the teachers online) where one was run, else an estimate: its own cost plus one
      teacher inference per example, epoch and teacher read (``teacher_forwards``), at the rate its store's
      dump measured (``forward``: store path -> seconds, joules per (example, view), training examples; a record
      written before ``teacher_forwards`` existed counts k x examples x its epochs). Both add the stage-1
      share, with its primary's inference for the estimate. ``online_source``: measured, estimated, unknown.
    """
    out = df.copy()
    n = out.groupby("experiment")["run_id"].transform("count")
    share_s = out["experiment"].map(lambda e: _shared_sum(shared, e, "wall_s")).astype(float) / n
    share_j = out["experiment"].map(lambda e: _shared_sum(shared, e, "energy_j")).astype(float) / n
    stage_s, stage_j, stage_fw = _stage1_share(out)

    def of_store(i: int) -> pd.Series:
        if "store" not in out:
            return pd.Series(np.nan, index=out.index, dtype=float)
        return pd.Series(out["store"].map(lambda p: ((forward or {}).get(p) or (None,) * 3)[i]), index=out.index,
                         dtype=float)

    rate_s, rate_j = of_store(0), of_store(1)
    forwards = _column(out, "teacher_forwards")
    older = out["k"].astype(float) * of_store(2) * _column(out, "epochs")  # records before teacher_forwards
    forwards = forwards.fillna(older)
    online = out["online"].fillna(False).astype(bool) if "online" in out else pd.Series(False, index=out.index)
    out["cached_s"] = out["wall_s"] + share_s + stage_s
    out["cached_j"] = out["energy_j"] + share_j + stage_j
    estimate_s = out["wall_s"] + stage_s + (forwards + stage_fw) * rate_s
    estimate_j = out["energy_j"] + stage_j + (forwards + stage_fw) * rate_j
    out["online_s"] = np.where(online, out["wall_s"] + stage_s, estimate_s)
    out["online_j"] = np.where(online, out["energy_j"] + stage_j, estimate_j)
    out["online_source"] = np.where(online, "measured", np.where(np.isnan(estimate_s), "unknown", "estimated"))
    twins = _twins(out)
    for col in ("online_s", "online_j"):
        measured = twins.map(out.set_index("_key")[col].to_dict()) if len(twins) else None
        if measured is not None:
            out[col] = np.where(measured.notna() & ~online, measured, out[col])
    if len(twins):
        found = twins.map(out.set_index("_key")["online_s"].to_dict()).notna() & ~online
        out.loc[found, "online_source"] = "measured"
    return out.drop(columns=["_key"], errors="ignore")


def _shared_sum(shared: dict[str, dict[str, dict[str, float | None]]] | None, exp: str, key: str) -> float:
    parts = [(c or {}).get(key) for c in ((shared or {}).get(exp) or {}).values()]
    return math.nan if any(p is None or (isinstance(p, float) and math.isnan(p)) for p in parts) else \
        math.fsum(parts)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(df[name], errors="coerce").astype(float) if name in df else \
        pd.Series(np.nan, index=df.index, dtype=float)


def _stage1_share(df: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Each run's share of its stage 1: seconds, joules and the primary's inference (0 without a stage 1)."""
    zero = pd.Series(0.0, index=df.index)
    if "stage1_id" not in df or not df["stage1_id"].notna().any():
        return zero, zero, zero
    users = df.groupby(["experiment", "stage1_id"])["run_id"].transform("count")
    has = df["stage1_id"].notna()
    share = {name: (_column(df, col) / users).where(has, 0.0)
             for name, col in (("s", "stage1_wall_s"), ("j", "stage1_energy_j"), ("fw", "stage1_teacher_forwards"))}
    return share["s"], share["j"], share["fw"]


def _twins(df: pd.DataFrame) -> pd.Series:
    """For each run, the key of its twin with the teachers run the other way; ``df`` gains a ``_key``."""
    if "twin_experiment" not in df:
        df["_key"] = ""
        return pd.Series(dtype=object)
    def key(exp: Any, row: Any) -> str:
        return f"{exp}|{','.join(map(str, row.teachers))}|{row.primary}|{row.seed}"
    df["_key"] = [key(r.experiment, r) for r in df.itertuples()]
    return pd.Series([key(r.twin_experiment, r) for r in df.itertuples()], index=df.index)
