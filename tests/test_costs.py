"""The two cost axes, each shared cost charged once to the runs that used it, the estimate against measured
online twins, the break-even, and the teacher rate: the dump's robust median and a later re-measurement."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from legacy_stores import image_store

from mtd_cache.store import forward_sidecar, read_forward_sidecar, write_forward_sidecar
from mtd_cache.store.merge import forward_cost
from mtd_cache.sweeps.aggregate import aggregate
from mtd_cache.sweeps.costs import Rate, Shared, break_even, cost_summary, estimate_check, run_costs

SHARED = Shared(dumps={"s.h5": {"wall_s": 6.0, "energy_j": 12.0}},
                teacher_sets={"s.h5": ("K", {"wall_s": 30.0, "energy_j": 60.0})},
                rates={"s.h5": Rate(0.01, 0.05, "the dump", 100)})


def _runs(experiment: str, online: bool, twin: str, walls: list[float]) -> list[dict]:
    teachers = [(0,), (1,), (0, 1)]
    return [{"run_id": f"{experiment}{i}", "experiment": experiment, "twin_experiment": twin, "online": online,
             "task": "t", "student": "s", "metric_name": "accuracy", "metric": 0.5 + 0.1 * i, "k": len(ts),
             "teachers": ts, "primary": None, "seed": 0, "wall_s": w, "energy_j": 2 * w, "store": "s.h5",
             "teacher_forwards": 100 * 2 * len(ts), "epochs": 2}  # 100 examples, 2 epochs, k teachers
            for i, (ts, w) in enumerate(zip(teachers, walls, strict=True))]


def test_cached_and_online_costs_by_hand():
    out = run_costs(pd.DataFrame(_runs("E", False, "O", [10.0, 10.0, 12.0])), SHARED)
    # cached: own wall + the teachers' 30 s and the dump's 6 s over 3 runs; online: own wall + teachers' share
    # + k * 100 * 2 forwards at 0.01 s
    assert out["teachers_s"].tolist() == [10.0, 10.0, 10.0] and out["dump_s"].tolist() == [2.0, 2.0, 2.0]
    assert out["cached_s"].tolist() == [22.0, 22.0, 24.0]
    assert out["online_s"].tolist() == pytest.approx([22.0, 22.0, 26.0])
    assert out["cached_j"].tolist() == [44.0, 44.0, 48.0]
    assert out["online_j"].tolist() == pytest.approx([50.0, 50.0, 64.0])  # 2 w + 20 + forwards * 0.05 J
    assert set(out["online_source"]) == {"estimated"}
    per_k = aggregate(out).set_index("k")
    # the one combination (0, 1): multi = its k = 2 run, single = the two k = 1 runs
    assert per_k.loc[2, "multi_online_s_mean"] == pytest.approx(26.0)
    assert per_k.loc[2, "single_online_s_mean"] == pytest.approx(44.0)
    cost = cost_summary(out).set_index("component")
    assert cost.loc["total (cached)", "wall_s"] == 32 + 36  # students + teachers + dump, all of them
    assert cost.loc["online: teacher inference", "wall_s"] == pytest.approx(8.0)  # 800 forwards x 0.01 s
    assert cost.loc["total online-equivalent", "wall_s"] == pytest.approx(32 + 30 + 8)


def test_shared_costs_are_split_over_every_run_of_the_folder_that_used_them():
    cached_a, cached_b = _runs("E", False, "O", [10.0] * 3), _runs("F", False, "P", [10.0] * 3)
    online = _runs("O", True, "E", [20.0] * 3)
    out = run_costs(pd.DataFrame(cached_a + cached_b + online), SHARED).set_index("experiment")
    # the dump: the 6 cached runs read the store, 1 s each; the online ones never did
    assert out.loc["E", "dump_s"].tolist() == [1.0] * 3 and out.loc["F", "dump_s"].tolist() == [1.0] * 3
    assert out.loc["O", "dump_s"].tolist() == [0.0] * 3
    # the teachers: all 9 distilled runs, online included, 30 / 9 s each, on both axes
    assert out["teachers_s"].tolist() == pytest.approx([30 / 9] * 9)
    assert out.loc["O", "online_s"].tolist() == pytest.approx([20 + 30 / 9] * 3)  # measured: no estimate added
    assert set(out.loc["O", "online_source"]) == {"measured"}
    per_experiment = {e: cost_summary(r).set_index("component").loc["dump", "wall_s"] for e, r in out.groupby(level=0)}
    assert per_experiment == pytest.approx({"E": 3.0, "F": 3.0, "O": 0.0})  # half the dump each, none online


def test_unknown_rates_and_unknown_teacher_costs():
    unknown = run_costs(pd.DataFrame(_runs("E", False, "O", [10.0] * 3)),
                        Shared(dumps=SHARED.dumps, teacher_sets={"s.h5": ("K", None)}, rates={"s.h5": Rate(None)}))
    assert unknown["online_s"].isna().all() and set(unknown["online_source"]) == {"unknown"}
    assert unknown["teachers_s"].tolist() == [0.0] * 3  # not counted on either axis (stated in cost.md)
    assert unknown["cached_s"].tolist() == [12.0] * 3
    assert math.isnan(aggregate(unknown).set_index("k").loc[2, "multi_online_s_mean"])


def test_records_from_before_teacher_forwards_count_k_examples_epochs():
    rows = _runs("E", False, "O", [10.0, 10.0, 12.0])
    for r in rows:
        r.pop("teacher_forwards")
    out = run_costs(pd.DataFrame(rows), SHARED)  # 100 training examples in the store, 2 epochs
    assert out["inference_s"].tolist() == pytest.approx([2.0, 2.0, 4.0])


def test_stage1_is_shared_by_the_runs_that_name_it_across_experiments():
    rows = _runs("E", False, "O", [10.0, 10.0, 12.0]) + _runs("F", False, "P", [10.0, 10.0, 12.0])
    for r, sid in zip(rows, ["a", "b", "a", "a", "c", "c"], strict=True):
        r.update(stage1_id=sid, stage1_wall_s=8.0, stage1_energy_j=np.nan, stage1_teacher_forwards=400)
    out = run_costs(pd.DataFrame(rows), Shared(rates=SHARED.rates))
    # stage 1 "a" is shared by three runs of two experiments, "b" is one run's, "c" two runs'
    assert out["stage1_s"].tolist() == pytest.approx([8 / 3, 8.0, 8 / 3, 8 / 3, 4.0, 4.0])
    assert out["inference_s"].tolist() == pytest.approx([2 + 4 / 3, 2 + 4, 4 + 4 / 3, 2 + 4 / 3, 2 + 2, 4 + 2])
    assert out["cached_j"].isna().all()  # an unknown stage-1 energy: no partial sum


def test_the_estimate_is_checked_against_measured_twins_per_k_and_the_break_even():
    cached = run_costs(pd.DataFrame(_runs("E", False, "O", [10.0, 10.0, 12.0])), SHARED)
    online = run_costs(pd.DataFrame(_runs("O", True, "E", [11.0, 13.0, 20.0])), SHARED)
    check = estimate_check(cached, online).set_index("k")
    assert check.loc[1, "pairs"] == 2 and check.loc[1, "ratio"] == pytest.approx((12 + 12) / (11 + 13))
    assert check.loc[2, "ratio"] == pytest.approx((12 + 4) / 20)
    be = break_even(cached, dump_s=6.0)
    # each run avoided 2, 2, 4 s of teacher inference: mean 8/3 s per run, 4/3 s per epoch
    assert be["runs"] == pytest.approx(6 / (8 / 3)) and be["epochs"] == pytest.approx(6 / (4 / 3))
    assert be["saved_s"] == pytest.approx(8 - 6) and be["ran"] == 3


def test_the_dumps_rate_is_a_robust_median_of_its_chunks():
    costs = {"energy_j": None, "forward": {
        "0": {"chunks": [[9.0, 100, True], [1.0, 100, False], [2.0, 100, False], [3.0, 100, False]], "primary": False},
        "1": {"chunks": [[1.5, 100, True], [100.0, 100, True]], "primary": False},  # two sessions' first chunks
        "2": {"chunks": [[50.0, 100, False]], "primary": True}}}  # a primary's chunks include copying states
    got = forward_cost(costs)
    # teacher 0's warm-up chunk is left out; teacher 1 has only warm-ups, so they count; the primary does not
    rates = [0.01, 0.02, 0.03, 0.015, 1.0]
    assert got["teacher_forward_s"] == pytest.approx(np.median(rates))
    assert (got["teacher_forward_s_q25"], got["teacher_forward_s_q75"]) == pytest.approx(
        tuple(np.quantile(rates, [0.25, 0.75])))
    assert got["teacher_forward_chunks"] == 5
    old = forward_cost({"energy_j": 10.0, "forward": {"0": [2.0, 100, False]}})  # a dump begun by an older version
    assert old["teacher_forward_s"] == 0.02 and old["teacher_forward_j"] == 0.1


def test_a_re_measured_rate_beside_the_store_is_preferred_and_named(tmp_path):
    from mtd_cache.sweeps.resources import from_stores

    store = image_store(tmp_path / "image.h5")
    df = pd.DataFrame([{"experiment": "E", "store": str(store), "k": 1}])
    _, shared = from_stores(df)
    assert shared.rates[str(store)].source == "the dump"
    write_forward_sidecar(store, "1" * 64, {"teacher_forward_s": 0.002, "batches": 24})
    _, shared = from_stores(df)
    assert shared.rates[str(store)] == Rate(0.002, None, "image.h5.forward.json", 4)
    assert read_forward_sidecar(store, "2" * 64) is None  # measured for another store's data: ignored
    forward_sidecar(store).write_text(json.dumps({"fingerprint": "1" * 64, "teacher_forward_s": "fast"}))
    assert read_forward_sidecar(store, "1" * 64) is None


@pytest.mark.slow
@pytest.mark.slow
def test_twins_measure_what_the_estimate_prices_and_the_report_compares_them(tmp_path):
    from click.testing import CliRunner

    from mtd_cache.cli.cache import cli as cache_cli
    from mtd_cache.sweeps.execute import SweepConfig, run_sweep
    from mtd_cache.sweeps.report import make_report
    from mtd_cache.teachers import train_teachers
    from mtd_cache.teachers.dump import run_dump

    teachers = tmp_path / "teachers"
    train_teachers("digits", [0, 1], teachers, "resnet8", None, {"epochs": 1, "batch_size": 512})
    store = run_dump("digits", teachers, tmp_path / "store.h5", [], {})
    got = CliRunner().invoke(cache_cli, ["inspect", str(store), "--measure-forward", "--batches", "4"])
    assert got.exit_code == 0, got.output
    side = json.loads(forward_sidecar(store).read_text())
    assert side["batches"] == 4 and side["batch_items"] == 128 and side["teacher_forward_s"] > 0  # a student's batch
    assert "re-measured" in got.output and "the report uses it" in got.output
    cfg = SweepConfig(stores=(str(store),), student="resnet8", pool=(0, 1), repeats=1, out=str(tmp_path / "runs"),
                      overrides={"epochs": 1, "batch_size": 512}, threads=1, twins_dir=str(teachers))
    results = run_sweep(cfg, workers=1)
    assert [r["key"].endswith("/online") for r in results] == [False, False, True, False, True, False, True]
    make_report(tmp_path / "runs", tmp_path / "report", n_resamples=200)
    cost = (tmp_path / "report" / "cost.md").read_text()
    assert "measured by store.h5.forward.json" in cost and "Estimate against measurement" in cost
    assert "| 1 | 2 |" in cost and "| 2 | 1 |" in cost  # per k: the pairs
    assert cost.count("Estimate against measurement") == 1  # the cached experiment's, not the online one's
    assert "Break-even for store.h5" in cost
    table = pd.read_csv(tmp_path / "report" / "cost.csv")
    online = table[table["component"] == "dump"].groupby("experiment")["wall_s"].sum()
    assert sorted(online.round(6).tolist())[0] == 0.0  # the online experiment is charged no dump
