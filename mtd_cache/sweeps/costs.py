"""What a sweep cost, on two axes, with every shared cost charged once to the runs that used it.

**Shared costs** (found from the stores the runs read, ``report.make_report``), each amortised equally over
every run *of the whole folder* that used it, whatever its experiment, and charged nowhere else:

- the teachers' training, keyed by the teacher set (its weights' hashes: R repeat stores of one set share
  it): every run with k >= 1 teachers distilled from that set, cached or online, pays a share;
- a store's dump: every *cached* run with k >= 1 that read that store (an online run never read it, a
  CE-only run reads no teacher output);
- a TinyBERT stage 1: the runs that name it.

**The two axes**, per run: *cached* = its own time + its shares (teachers, dump, stage 1); *online-equivalent*
(the paper's axis, k teachers inside every step) = its own time + its shares of the teachers and stage 1, plus,
for a cached run, one teacher inference per example, epoch and teacher read (``teacher_forwards``) at the
store's measured rate. Both include the teachers' training. A run made with ``--online`` is its own measured
online time: it stays in its own experiment and is never substituted into a cached one; where a cached
experiment has an online twin in the folder, ``estimate_check`` compares the estimate with the measurement per
k, and ``break_even`` says after how many runs the cache pays for its dump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Rate:
    """One teacher inference per (example, view): seconds, joules (None: unknown), and where it was measured."""

    seconds: float | None
    joules: float | None = None
    source: str = ""  # "the dump" or the sidecar file's name
    examples: int | None = None  # the store's training examples (prices records written before teacher_forwards)


@dataclass
class Shared:
    """What the runs share, by store path: its dump's cost, its teacher set (key and training cost), its rate."""

    dumps: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # store path -> (the teacher set's key, its training cost; None: unknown, not counted on either axis)
    teacher_sets: dict[str, tuple[str, dict[str, float | None] | None]] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)
    # store path -> what its teachers agree on (``tasks.agreement``), None: no dev logits to tell
    agreement: dict[str, dict | None] = field(default_factory=dict)


def run_costs(df: pd.DataFrame, shared: Shared | None = None) -> pd.DataFrame:
    """``df`` with each run's shares and both axes (seconds, joules): ``teachers_s``/``_j``, ``dump_s``/``_j``,
    ``stage1_s``/``_j``, ``cached_s``/``_j``, ``online_s``/``_j``, ``online_source`` (measured, estimated,
    unknown) and ``inference_s``/``_j`` (the estimated teacher inference a cached run avoided; 0 for online runs)."""
    shared = shared or Shared()
    out = df.copy()
    store = out["store"] if "store" in out else pd.Series(None, index=out.index, dtype=object)
    online = out["online"].fillna(False).astype(bool) if "online" in out else pd.Series(False, index=out.index)
    distilled = out["k"].astype(int) > 0
    for unit in ("s", "j"):
        key = "wall_s" if unit == "s" else "energy_j"
        dump_cost = store.map(lambda p, key=key: (shared.dumps.get(p) or {}).get(key, 0.0))
        out[f"dump_{unit}"] = _amortise(dump_cost, store.where(distilled & ~online))
        sets = store.map(lambda p: (shared.teacher_sets.get(p) or (None, None))[0])
        set_cost = store.map(lambda p, key=key: ((shared.teacher_sets.get(p) or (None, None))[1] or {}).get(key, 0.0))
        out[f"teachers_{unit}"] = _amortise(set_cost, sets.where(distilled))
    out["stage1_s"], out["stage1_j"], stage_fw = _stage1_share(out)
    rate = store.map(lambda p: shared.rates.get(p) or Rate(None))
    examples = _column(out, "train_examples").fillna(rate.map(lambda r: r.examples).astype(float))
    older = out["k"].astype(float) * examples * _column(out, "epochs")  # records written before teacher_forwards
    forwards = _column(out, "teacher_forwards").fillna(older) + stage_fw
    for unit, attr in (("s", "seconds"), ("j", "joules")):
        per = rate.map(lambda r, attr=attr: getattr(r, attr)).astype(float)
        out[f"inference_{unit}"] = (forwards * per).where(~online, 0.0)
        own = out["wall_s" if unit == "s" else "energy_j"].astype(float)
        common = own + out[f"teachers_{unit}"] + out[f"stage1_{unit}"]
        out[f"cached_{unit}"] = common + out[f"dump_{unit}"]
        out[f"online_{unit}"] = common + out[f"inference_{unit}"]
    out["online_source"] = np.where(online, "measured", np.where(np.isnan(out["inference_s"]), "unknown",
                                                                  "estimated"))
    return out


def _amortise(cost: pd.Series, users: pd.Series) -> pd.Series:
    """Each user's equal share of its resource's cost (NaN cost: unknown share); 0 for rows that use none."""
    count = users.map(users.value_counts())
    share = cost.astype(float) / count
    return share.where(users.notna(), 0.0)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(df[name], errors="coerce").astype(float) if name in df else \
        pd.Series(np.nan, index=df.index, dtype=float)


def _stage1_share(df: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Each run's share of its stage 1 (across experiments): seconds, joules and its primary's forwards."""
    zero = pd.Series(0.0, index=df.index)
    if "stage1_id" not in df or not df["stage1_id"].notna().any():
        return zero, zero, zero
    users = df["stage1_id"].map(df["stage1_id"].value_counts())
    has = df["stage1_id"].notna()
    return tuple((_column(df, col) / users).where(has, 0.0)  # type: ignore[return-value]
                 for col in ("stage1_wall_s", "stage1_energy_j", "stage1_teacher_forwards"))


# ----------------------------------------------------------------------------- per experiment


COMPONENTS = ("students", "teachers", "dump", "stage1")


def cost_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One experiment's cost on both axes, from ``run_costs``' columns: its runs' own time and their shares,
    the store's total, the teacher inference an online run of each would add, and the online-equivalent total.
    Unknown energy stays NaN: never a partial sum. Columns: component, wall_s, energy_j, n_runs, per_run_wall_s,
    per_run_energy_j."""
    n = len(runs)
    rows = [_row("students", runs["wall_s"], runs["energy_j"], n)]
    rows += [_row(name, runs[f"{name}_s"], runs[f"{name}_j"], n) for name in COMPONENTS[1:] if f"{name}_s" in runs
             and (name != "stage1" or runs["stage1_s"].ne(0).any())]  # a stage 1 where a recipe has one
    rows.append(_row("total (cached)", runs["cached_s"], runs["cached_j"], n) if "cached_s" in runs else
                _row("total (cached)", runs["wall_s"], runs["energy_j"], n))
    if "online_s" in runs:
        rows.append(_row("online: teacher inference", runs["inference_s"], runs["inference_j"], n))
        rows.append(_row("total online-equivalent", runs["online_s"], runs["online_j"], n))
    return pd.DataFrame(rows)


def _row(name: str, wall: pd.Series, energy: pd.Series, n: int) -> dict[str, Any]:
    w, e = _sum_or_nan(wall), _sum_or_nan(energy)
    return {"component": name, "wall_s": w, "energy_j": e, "n_runs": n,
            "per_run_wall_s": w / n if n else math.nan, "per_run_energy_j": e / n if n else math.nan}


def _sum_or_nan(values: pd.Series) -> float:
    """The sum, or NaN when any value is unknown (a partial sum would pass for the total)."""
    values = pd.to_numeric(pd.Series(values), errors="coerce")
    return math.nan if values.isna().any() else float(values.sum())


def estimate_check(cached: pd.DataFrame, online: pd.DataFrame) -> pd.DataFrame:
    """Per k, the online time estimated for a cached experiment's runs against the measured time of their online
    twins (same teachers, primary and seed): the runs' own time plus inference, shares left out (the same on both
    sides). Columns: k, pairs, estimated_s, measured_s, ratio (estimate / measured)."""
    key = ["teachers", "primary", "seed"]
    a = cached.assign(estimate=cached["wall_s"] + cached["inference_s"])[[*key, "k", "estimate"]]
    b = online.assign(measured=online["wall_s"])[[*key, "measured"]]
    both = a.merge(b, on=key).dropna(subset=["estimate", "measured"])
    rows = [{"k": int(k), "pairs": len(g), "estimated_s": g["estimate"].sum(), "measured_s": g["measured"].sum(),
             "ratio": g["estimate"].sum() / g["measured"].sum()} for k, g in both.groupby("k")]
    return pd.DataFrame(rows, columns=["k", "pairs", "estimated_s", "measured_s", "ratio"])


def break_even(runs: pd.DataFrame, dump_s: float) -> dict[str, float] | None:
    """When a cached experiment's dump pays for itself: the dump's seconds over the mean teacher inference one of
    its runs avoided (``runs``: the mix of runs), and over the mean inference of one student epoch."""
    used = runs[(runs["k"] > 0) & runs["inference_s"].notna()]
    if not len(used) or not math.isfinite(dump_s) or not used["inference_s"].sum() > 0:
        return None
    per_run = float(used["inference_s"].mean())
    epochs = _column(used, "epochs").fillna(1.0).clip(lower=1.0)
    per_epoch = float((used["inference_s"] / epochs).mean())
    return {"dump_s": dump_s, "runs": dump_s / per_run, "epochs": dump_s / per_epoch, "mean_k": float(used["k"].mean()),
            "ran": len(used), "saved_s": float(used["inference_s"].sum()) - dump_s}


# ----------------------------------------------------------------------------- cost.md


def shared_table(df: pd.DataFrame, shared: Shared) -> pd.DataFrame:
    """Every shared cost once: what it is, its total, how many runs of the folder used it, and each one's share."""
    rows = []
    store = df["store"] if "store" in df else pd.Series(None, index=df.index, dtype=object)
    online = df["online"].fillna(False).astype(bool) if "online" in df else pd.Series(False, index=df.index)
    distilled = df["k"].astype(int) > 0
    seen = set()
    for path in sorted(shared.teacher_sets):
        key, cost = shared.teacher_sets[path]
        if key in seen:
            continue
        seen.add(key)
        paths = [p for p, (k, _) in shared.teacher_sets.items() if k == key]
        n = int((store.isin(paths) & distilled).sum())
        rows.append(_shared_row(f"teachers' training ({len(key.split(','))} teachers of {Path(paths[0]).name})",
                                cost, n))
    for path, cost in sorted(shared.dumps.items()):
        n = int(((store == path) & distilled & ~online).sum())
        rows.append(_shared_row(f"dump of {Path(path).name}", cost, n))
    return pd.DataFrame(rows, columns=["shared cost", "wall_s", "energy_j", "used by runs", "per run wall_s"])


def _shared_row(name: str, cost: dict[str, float | None] | None, n: int) -> dict[str, Any]:
    if cost is None:
        return {"shared cost": f"{name}: unknown (no teacher.json beside the teachers), counted on neither axis",
                "wall_s": math.nan, "energy_j": math.nan, "used by runs": n, "per run wall_s": math.nan}
    wall = math.nan if cost.get("wall_s") is None else float(cost["wall_s"])
    energy = math.nan if cost.get("energy_j") is None else float(cost["energy_j"])
    return {"shared cost": name, "wall_s": wall, "energy_j": energy, "used by runs": n,
            "per run wall_s": wall / n if n else math.nan}


def experiment_costs_markdown(runs: pd.DataFrame, per_k: pd.DataFrame, shared: Shared,
                              twin: pd.DataFrame | None) -> str:
    """One experiment's part of ``cost.md`` (after its components table): both axes per k, how the online
    axis was priced, the estimate against measured online twins, and when the cache pays for its dump."""
    from .tables import markdown

    parts = []
    if len(per_k) and "multi_cached_s_mean" in per_k:
        table = pd.DataFrame({"k": per_k["k"].astype(int),
                              **{f"{m}-teacher {axis} (s)": per_k[f"{m}_{axis}_s_mean"].to_numpy()
                                 for axis in ("cached", "online") for m in ("multi", "single")}})
        parts.append("Per combination, mean over combinations (the runs each mode's worst and best are taken "
                     "over): *cached* = the runs' own time plus their shares of the teachers, the dump and stage 1; "
                     "*online* = the same runs with their k teachers inside (the paper's axis).\n")
        parts.append(markdown(table))
    online = bool(runs["online"].fillna(False).astype(bool).all()) if "online" in runs else False
    paths = sorted(set(runs["store"].dropna())) if "store" in runs else []
    if online:
        parts.append("The teachers ran inside these runs (--online): their online times are measured; they read "
                     "no store, so no dump is charged to them.\n")
    else:
        for p in paths:
            rate = shared.rates.get(p) or Rate(None)
            what = "unknown (no rate recorded)" if rate.seconds is None else \
                f"{1e3 * rate.seconds:.4g} ms per teacher inference per item, measured by {rate.source}"
            parts.append(f"Online-equivalent of the runs on {Path(p).name}: estimated at {what}.\n")
    if twin is not None and len(twin) and not online:  # a cached experiment's estimate, against its twin
        check = estimate_check(runs, twin)
        parts.append("Estimate against measurement: each cached run's estimated online time (its own time plus "
                     "the teacher inference) against its online twin's measured time (same teachers, primary and "
                     "seed), summed per k:\n")
        parts.append(markdown(check))
    if not online:
        for p in paths:
            dump = (shared.dumps.get(p) or {}).get("wall_s")
            be = break_even(runs[runs["store"] == p], float(dump) if dump is not None else math.nan)
            if be is not None:
                verdict = f"saved {be['saved_s']:.0f} s" if be["saved_s"] >= 0 else \
                    f"cost {-be['saved_s']:.0f} s more than running the teachers online"
                parts.append(f"Break-even for {Path(p).name}: its dump ({be['dump_s']:.0f} s) costs as much as the "
                             f"teacher inference of about {be['runs']:.1f} runs of this experiment's mix (about "
                             f"{be['epochs']:.0f} student epochs at its mean k of {be['mean_k']:.2f}); with "
                             f"{be['ran']} runs the cache {verdict}.\n")
    return "\n".join(parts)
