"""The two cost axes: the store's (runs plus their shares) and the paper's online-equivalent (teachers inside)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtd_cache.sweeps.aggregate import aggregate
from mtd_cache.sweeps.costs import cost_summary, run_costs


def _runs(experiment: str, online: bool, twin: str, walls: list[float]) -> list[dict]:
    teachers = [(0,), (1,), (0, 1)]
    return [{"run_id": f"{experiment}{i}", "experiment": experiment, "twin_experiment": twin, "online": online,
             "task": "t", "student": "s", "metric_name": "accuracy", "metric": 0.5 + 0.1 * i, "k": len(ts),
             "teachers": ts, "primary": None, "seed": 0, "wall_s": w, "energy_j": 2 * w, "store": "s.h5",
             "teacher_forwards": 100 * 2 * len(ts)}  # 100 examples, 2 epochs, k teachers
            for i, (ts, w) in enumerate(zip(teachers, walls, strict=True))]


def test_cached_and_online_costs_by_hand():
    df = pd.DataFrame(_runs("E", False, "O", [10.0, 10.0, 12.0]))
    shared = {"E": {"teachers": {"wall_s": 30.0, "energy_j": 60.0}, "dump": {"wall_s": 6.0, "energy_j": 12.0}}}
    out = run_costs(df, shared, {"s.h5": (0.01, 0.05, 100)})
    # cached: own wall + (30 + 6) / 3 runs; online: own wall + k * 100 * 2 forwards at 0.01 s
    assert out["cached_s"].tolist() == [22.0, 22.0, 24.0]
    assert out["online_s"].tolist() == pytest.approx([12.0, 12.0, 16.0])
    assert out["cached_j"].tolist() == [44.0, 44.0, 48.0]
    assert out["online_j"].tolist() == pytest.approx([30.0, 30.0, 44.0])  # 2 w + forwards * 0.05 J
    assert set(out["online_source"]) == {"estimated"}
    per_k = aggregate(out).set_index("k")
    # the one combination (0, 1): multi = its k = 2 run, single = the two k = 1 runs
    assert per_k.loc[2, "multi_online_s_mean"] == pytest.approx(16.0)
    assert per_k.loc[2, "single_online_s_mean"] == pytest.approx(24.0)
    assert per_k.loc[2, "multi_cached_s_mean"] == 24.0 and per_k.loc[2, "single_cached_s_mean"] == 44.0
    cost = cost_summary(out, shared["E"]).set_index("component")
    assert cost.loc["total", "wall_s"] == 32 + 36  # the store's: students + teachers + dump
    assert cost.loc["online: teacher inference", "wall_s"] == pytest.approx(8.0)  # 800 forwards x 0.01 s
    assert cost.loc["total online-equivalent", "wall_s"] == pytest.approx(40.0)


def test_measured_online_runs_are_preferred_and_unknown_rates_stay_unknown():
    cached, online = _runs("E", False, "O", [10.0, 10.0, 12.0]), _runs("O", True, "E", [30.0, 31.0, 50.0])
    out = run_costs(pd.DataFrame(cached + online), {}, {"s.h5": (0.01, None, 100)})
    mine = out[out["experiment"] == "E"]
    assert mine["online_s"].tolist() == [30.0, 31.0, 50.0] and set(mine["online_source"]) == {"measured"}
    assert out[out["experiment"] == "O"]["online_s"].tolist() == [30.0, 31.0, 50.0]
    unknown = run_costs(pd.DataFrame(cached), {}, {"s.h5": (None, None, None)})
    assert unknown["online_s"].isna().all() and set(unknown["online_source"]) == {"unknown"}
    assert math.isnan(aggregate(unknown).set_index("k").loc[2, "multi_online_s_mean"])


def test_records_from_before_teacher_forwards_count_k_examples_epochs():
    rows = _runs("E", False, "O", [10.0, 10.0, 12.0])
    for r in rows:
        r.pop("teacher_forwards")
        r["epochs"] = 2
    out = run_costs(pd.DataFrame(rows), {}, {"s.h5": (0.01, None, 100)})  # 100 training examples in the store
    assert out["online_s"].tolist() == pytest.approx([12.0, 12.0, 16.0])


def test_stage1_is_shared_by_the_runs_that_name_it():
    rows = _runs("E", False, "O", [10.0, 10.0, 12.0])
    for r, sid in zip(rows, ["a", "b", "a"], strict=True):
        r.update(stage1_id=sid, stage1_wall_s=8.0, stage1_energy_j=np.nan, stage1_teacher_forwards=400)
    out = run_costs(pd.DataFrame(rows), {}, {"s.h5": (0.01, None, 100)})
    # stage 1 "a" is shared by runs 0 and 2 (4 s each), "b" is run 1's alone (8 s); its 400 forwards likewise
    assert out["cached_s"].tolist() == [14.0, 18.0, 16.0]
    assert out["online_s"].tolist() == pytest.approx([10 + 4 + 2 + 2, 10 + 8 + 2 + 4, 12 + 4 + 4 + 2])
    assert out["cached_j"].isna().all()  # an unknown stage-1 energy: no partial sum
