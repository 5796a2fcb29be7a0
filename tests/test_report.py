"""Report aggregation against numbers worked out by hand, equal effort, files written."""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from mtd_cache.sweeps.aggregate import SUMMARY_COLUMNS, aggregate, expected_extremes
from mtd_cache.sweeps.costs import Shared, cost_summary, run_costs
from mtd_cache.sweeps.records import load_records
from mtd_cache.sweeps.report import CE_ONLY_LABEL, write_report

# A ResNet sweep by hand: pool of 3 teachers, R = 2 repeats (seeds 0, 1), scores in %.
# teacher set -> (score at seed 0, score at seed 1); wall_s is 10 s for k = 1, 12 s for k = 2, 14 s for k = 3.
SCORES = {
    (0,): (80, 84), (1,): (70, 78), (2,): (90, 86),
    (0, 1): (85, 81), (0, 2): (88, 92), (1, 2): (83, 87),
    (0, 1, 2): (91, 89),
}
WALL = {1: 10.0, 2: 12.0, 3: 14.0}


def record(teachers: tuple[int, ...], seed: int, metric: float, **kw) -> dict:
    rec = dict(run_id=f"r{'-'.join(map(str, teachers))}s{seed}", task="cifar10", student="resnet20",
               teachers=list(teachers), primary=None, k=len(teachers), seed=seed, metric_name="accuracy",
               metric=metric, wall_s=WALL.get(len(teachers), 5.0), energy_j=100.0, status="done",
               config={"lr": 0.1}, device="cpu")
    rec.update(kw)
    return rec


def write_runs(root: Path, records: list[dict]) -> Path:
    for rec in records:
        path = root / rec["task"] / rec["student"] / f"{rec['run_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    return root


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    recs = [record(ts, s, v) for ts, vals in SCORES.items() for s, v in enumerate(vals)]
    recs += [record((), 0, 60.0, run_id="ce0"), record((), 1, 62.0, run_id="ce1")]   # CE-only: mean 61
    recs.append(record((0,), 2, 99.0, run_id="failed", status="failed"))             # not finished
    root = write_runs(tmp_path / "runs", recs)
    (root / "cifar10" / "notes.json").write_text(json.dumps({"hello": 1}))           # not a record
    (root / "cifar10" / "broken.json").write_text("{not json")
    return root


@pytest.fixture
def df(runs_dir: Path) -> pd.DataFrame:
    return load_records(runs_dir)


def by_k(summary: pd.DataFrame) -> dict[int, pd.Series]:
    return {int(row["k"]): row for _, row in summary.iterrows()}


def pstd(*xs: float) -> float:
    """Population std, written out: sqrt(sum (x - mean)^2 / n)."""
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def test_load_records_keeps_finished_records(df: pd.DataFrame) -> None:
    assert len(df) == 14 + 2
    assert "failed" not in set(df["run_id"])
    assert list(df.columns[:12]) == ["run_id", "task", "student", "teachers", "primary", "k", "seed",
                                     "metric_name", "metric", "wall_s", "energy_j", "status"]
    assert "config" not in df.columns and "device" in df.columns
    assert set(df["teachers"]) == set(SCORES) | {()}


def test_load_records_warns_about_non_records(runs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mtd_cache.sweeps.records"):
        load_records(runs_dir)
    text = caplog.text
    assert "notes.json: not a run record" in text and "broken.json: not readable JSON" in text


def test_load_records_null_energy_and_duplicates(tmp_path: Path) -> None:
    write_runs(tmp_path, [record((0,), 0, 1.0, energy_j=None, primary=0)])
    copy = tmp_path / "elsewhere" / "copy.json"
    copy.parent.mkdir()
    copy.write_text((tmp_path / "cifar10" / "resnet20" / "r0s0.json").read_text())
    df = load_records(tmp_path)
    assert len(df) == 1 and math.isnan(df["energy_j"].iloc[0]) and df["primary"].iloc[0] == 0


def test_aggregate_by_hand(df: pd.DataFrame) -> None:
    rows = by_k(aggregate(df))
    assert list(aggregate(df).columns) == SUMMARY_COLUMNS
    assert sorted(rows) == [1, 2, 3]  # the CE-only runs (k = 0) are not aggregated

    # k = 1: combinations {0}, {1}, {2}; both modes are the same runs.
    #   min: 80, 70, 86 -> mean 236/3; max: 84, 78, 90 -> mean 84
    r1 = rows[1]
    assert (r1["n_expected"], r1["n_combinations"]) == (3, 3)
    for mode in ("multi", "single"):
        assert r1[f"{mode}_min_mean"] == pytest.approx(236 / 3)
        assert r1[f"{mode}_min_std"] == pytest.approx(pstd(80, 70, 86))
        assert r1[f"{mode}_max_mean"] == pytest.approx(84)
        assert r1[f"{mode}_max_std"] == pytest.approx(pstd(84, 78, 90))

    # k = 2, multi: {0,1} [85, 81] -> 81, 85; {0,2} [88, 92] -> 88, 92; {1,2} [83, 87] -> 83, 87
    #   min mean (81 + 88 + 83)/3 = 84, std sqrt((9 + 16 + 1)/3); max mean (85 + 92 + 87)/3 = 88, same std
    # k = 2, single: {0,1} [80, 84, 70, 78] -> 70, 84; {0,2} [80, 84, 90, 86] -> 80, 90;
    #   {1,2} [70, 78, 90, 86] -> 70, 90: min mean 220/3, max mean (84 + 90 + 90)/3 = 88, std sqrt(24/3)
    r2 = rows[2]
    assert r2["multi_min_mean"] == pytest.approx(84) and r2["multi_min_std"] == pytest.approx(math.sqrt(26 / 3))
    assert r2["multi_max_mean"] == pytest.approx(88) and r2["multi_max_std"] == pytest.approx(math.sqrt(26 / 3))
    assert r2["single_min_mean"] == pytest.approx(220 / 3) and r2["single_min_std"] == pytest.approx(pstd(70, 80, 70))
    assert r2["single_max_mean"] == pytest.approx(88) and r2["single_max_std"] == pytest.approx(math.sqrt(8))
    assert (r2["multi_n_runs_mean"], r2["single_n_runs_mean"]) == (2, 4)

    # k = 3, one combination: multi [91, 89] -> 89, 91; single = all six k = 1 runs -> 70, 90; std 0
    r3 = rows[3]
    assert (r3["n_expected"], r3["n_combinations"]) == (1, 1)
    assert (r3["multi_min_mean"], r3["multi_max_mean"], r3["single_min_mean"], r3["single_max_mean"]) == \
        (89, 91, 70, 90)
    assert r3["multi_min_std"] == 0 and r3["single_max_std"] == 0  # population std: 0, not NaN


def test_aggregate_time(df: pd.DataFrame) -> None:
    # time of a mode for a combination = summed wall_s of its runs:
    #   multi: k=1 2 x 10 = 20, k=2 2 x 12 = 24, k=3 2 x 14 = 28; single: k x 2 x 10 = 20, 40, 60
    rows = by_k(aggregate(df))
    assert [rows[k]["multi_time_s_mean"] for k in (1, 2, 3)] == [20, 24, 28]
    assert [rows[k]["single_time_s_mean"] for k in (1, 2, 3)] == [20, 40, 60]
    assert [rows[k]["multi_run_s_mean"] for k in (1, 2, 3)] == [10, 12, 14]
    assert rows[2]["multi_time_s_std"] == 0


def test_equal_effort_by_hand(df: pd.DataFrame) -> None:
    rows = by_k(aggregate(df))  # r = 2 (two seeds)
    # multi mode has exactly 2 runs per combination: E[min], E[max] of 2 of 2 are its min and max
    for k in (1, 2, 3):
        assert rows[k]["eq_r"] == 2 and rows[k]["eq_n_combinations"] == rows[k]["n_combinations"]
        assert rows[k]["eq_multi_min_mean"] == pytest.approx(rows[k]["multi_min_mean"])
        assert rows[k]["eq_multi_max_mean"] == pytest.approx(rows[k]["multi_max_mean"])
    # k = 2 single, pairs of 4 runs, C(4, 2) = 6, weights C(4-i, 1) = 3, 2, 1, 0 and C(i-1, 1) = 0, 1, 2, 3:
    #   {0,1} sorted [70, 78, 80, 84]: E[min] = (210 + 156 + 80)/6 = 446/6, E[max] = (78 + 160 + 252)/6 = 490/6
    #   {0,2} sorted [80, 84, 86, 90]: E[min] = (240 + 168 + 86)/6 = 494/6, E[max] = (84 + 172 + 270)/6 = 526/6
    #   {1,2} sorted [70, 78, 86, 90]: E[min] = (210 + 156 + 86)/6 = 452/6, E[max] = (78 + 172 + 270)/6 = 520/6
    assert rows[2]["eq_single_min_mean"] == pytest.approx((446 + 494 + 452) / 18)
    assert rows[2]["eq_single_min_std"] == pytest.approx(pstd(446 / 6, 494 / 6, 452 / 6))
    assert rows[2]["eq_single_max_mean"] == pytest.approx((490 + 526 + 520) / 18)
    # k = 3 single, pairs of 6 runs sorted [70, 78, 80, 84, 86, 90], C(6, 2) = 15:
    #   E[min] = (70*5 + 78*4 + 80*3 + 84*2 + 86*1)/15 = 1156/15
    #   E[max] = (78*1 + 80*2 + 84*3 + 86*4 + 90*5)/15 = 1284/15
    assert rows[3]["eq_single_min_mean"] == pytest.approx(1156 / 15)
    assert rows[3]["eq_single_max_mean"] == pytest.approx(1284 / 15)


def test_multi_mode_pools_primaries(tmp_path: Path) -> None:
    """BERT-style: the multi mode of {0,1} takes both primaries' runs; R = 1 so E[.] of 1 draw = mean."""
    recs = [record((0,), 0, 75.0, primary=0), record((1,), 0, 71.0, primary=1),
            record((0, 1), 0, 80.0, primary=0, run_id="p0"), record((0, 1), 0, 77.0, primary=1, run_id="p1"),
            record((0, 1, 3), 0, 99.0, primary=3, run_id="outside-pool")]
    rows = by_k(aggregate(load_records(write_runs(tmp_path, recs)), pool=[0, 1]))
    assert sorted(rows) == [1, 2]
    assert (rows[2]["multi_min_mean"], rows[2]["multi_max_mean"]) == (77, 80)
    assert (rows[2]["single_min_mean"], rows[2]["single_max_mean"]) == (71, 75)
    assert rows[2]["eq_r"] == 1
    assert rows[2]["eq_multi_min_mean"] == rows[2]["eq_multi_max_mean"] == pytest.approx(78.5)
    assert rows[2]["eq_single_min_mean"] == rows[2]["eq_single_max_mean"] == pytest.approx(73)


def test_missing_combination_is_left_out(df: pd.DataFrame) -> None:
    partial = df[df["teachers"] != (0, 2)]
    r2 = by_k(aggregate(partial))[2]
    assert (r2["n_expected"], r2["n_combinations"]) == (3, 2)
    assert r2["multi_min_mean"] == pytest.approx((81 + 83) / 2)


def test_too_few_runs_for_equal_effort(df: pd.DataFrame) -> None:
    r3 = by_k(aggregate(df, repeats=3))[3]   # multi mode has 2 runs < 3
    assert r3["eq_n_combinations"] == 0 and math.isnan(r3["eq_multi_min_mean"])
    assert r3["multi_min_mean"] == 89


def brute_force(values: list[float], r: int) -> tuple[float, float]:
    subsets = list(itertools.combinations(values, r))
    return (sum(min(s) for s in subsets) / len(subsets), sum(max(s) for s in subsets) / len(subsets))


@pytest.mark.parametrize("values, r", [
    ([3.0], 1), ([5.0, 1.0, 4.0], 1), ([5.0, 1.0, 4.0], 2), ([5.0, 1.0, 4.0], 3),
    ([0.7, 0.2, 0.9, 0.2, 0.5, 0.9, 0.1], 3), ([2.0, 2.0, 2.0, 1.0], 2), (list(range(10)), 4),
])
def test_expected_extremes_matches_brute_force(values: list[float], r: int) -> None:
    lo, hi = expected_extremes(values, r)
    bf_lo, bf_hi = brute_force(values, r)
    assert lo == pytest.approx(bf_lo, rel=1e-12) and hi == pytest.approx(bf_hi, rel=1e-12)


def test_expected_extremes_hand_value() -> None:
    # pairs of [1, 2, 4]: (1,2) (1,4) (2,4): mins 1, 1, 2 -> 4/3; maxes 2, 4, 4 -> 10/3
    assert expected_extremes([4, 1, 2], 2) == pytest.approx((4 / 3, 10 / 3))


@pytest.mark.parametrize("values, r", [([1.0, 2.0], 0), ([1.0, 2.0], 3), ([], 1), ([1.0, math.nan], 1)])
def test_expected_extremes_rejects(values: list[float], r: int) -> None:
    with pytest.raises(ValueError):
        expected_extremes(values, r)


def test_cost_summary_amortises_shared_costs(df: pd.DataFrame) -> None:
    # 16 runs on one store: students 6*10 + 6*12 + 2*14 + 2*5 (CE-only) = 170 s, 16 * 100 J; the 14 distilled
    # runs share the teachers (280 s) and the dump (14 s), the CE-only runs neither
    shared = Shared(dumps={"s.h5": {"wall_s": 14.0, "energy_j": None}},
                    teacher_sets={"s.h5": ("K", {"wall_s": 280.0, "energy_j": 1400.0})}, rates={})
    cost = cost_summary(run_costs(df.assign(store="s.h5"), shared)).set_index("component")
    assert cost.loc["students", "wall_s"] == 170 and cost.loc["students", "energy_j"] == 1600
    assert cost.loc["teachers", "wall_s"] == 280 and cost.loc["teachers", "energy_j"] == 1400
    assert cost.loc["dump", "wall_s"] == 14 and math.isnan(cost.loc["dump", "energy_j"])
    assert cost.loc["total (cached)", "wall_s"] == 170 + 280 + 14
    assert math.isnan(cost.loc["total (cached)", "energy_j"])  # one unknown energy: no partial total


def test_cost_summary_stage1(tmp_path: Path) -> None:
    # two stage-1 runs (30 s and 50 s) shared by 3 and 1 stage-2 runs
    recs = [record((0,), 0, 1.0, primary=0, stage1_id="a", stage1_wall_s=30.0),
            record((0, 1), 0, 1.0, primary=0, stage1_id="a", stage1_wall_s=30.0),
            record((0, 2), 0, 1.0, primary=0, stage1_id="a", stage1_wall_s=30.0),
            record((1,), 0, 1.0, primary=1, stage1_id="b", stage1_wall_s=50.0)]
    df = load_records(write_runs(tmp_path, recs))
    row = cost_summary(run_costs(df)).set_index("component").loc["stage1"]
    assert (row["wall_s"], row["n_runs"], row["per_run_wall_s"]) == (80, 4, 20)
    assert math.isnan(row["energy_j"])


def test_write_report_files(df: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "report"
    written = write_report(df, out, reference_lines={"teacher ensemble (dev)": 93.0})
    names = sorted(p.name for p in written)
    assert names == sorted(["runs.csv", "runs.md", "summary.csv", "summary.md", "cost.csv", "cost.md",
                            "differences.csv", "differences.md",
                            "cifar10_resnet20_score_vs_k.png", "cifar10_resnet20_score_vs_online_time.png",
                            "cifar10_resnet20_score_vs_cached_time.png",
                            "cifar10_resnet20_equal_effort_vs_k.png"])
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left behind

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary.loc[summary["k"] == 2, "multi_min_mean"].item() == pytest.approx(84)
    assert summary.loc[summary["k"] == 2, "single_min_mean"].item() == pytest.approx(220 / 3)
    assert summary.loc[summary["k"] == 3, "eq_single_max_mean"].item() == pytest.approx(1284 / 15)

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 16
    assert runs.loc[runs["run_id"] == "r0-2s1", "metric"].item() == 92
    assert runs.loc[runs["run_id"] == "r0-2s1", "teachers"].item() == "0,2"

    md = (out / "summary.md").read_text()
    assert md.startswith("**How to read this report.**")  # the terms defined once, first
    assert "- no confidence intervals: 14 of 14 runs kept no predictions" in md
    assert "- CE-only students (k = 0, no teacher): 61.0000 mean over 2 runs" in md
    eq = md.index("### Equal effort: the expected worst of R = 2 runs of each mode")
    assert eq < md.index("### Equal effort: the expected best of R = 2 runs of each mode")
    assert eq < md.index("### Worst and best case") < md.index("### Each mode's worst and best case")
    # k = 2, the worst case: multi 84 (mean of the minima 81, 88, 83), single min 220 / 3, in points x 100
    assert f"| 2 | 3 | 84.0000 ±{pstd(81, 88, 83):.4f} | 88.0000 ±" in md
    diffs = pd.read_csv(out / "differences.csv").set_index(["k", "difference"])
    assert diffs.loc[(2, "worst"), "estimate"] == pytest.approx(84 - 220 / 3)
    assert diffs.loc[(2, "worst"), "estimate"] == pytest.approx(
        diffs.loc[(2, "eq_worst"), "estimate"] + diffs.loc[(2, "selection_worst"), "estimate"])

    for png in out.glob("*.png"):
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)


def test_write_report_ce_only_line_from_baselines(df: pd.DataFrame, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []
    import mtd_cache.sweeps.report as report
    real = report.figures
    monkeypatch.setattr(report, "figures",
                        lambda per_k, stem, lines, diffs: seen.append(lines) or real(per_k, stem, lines, diffs))
    write_report(df, tmp_path, reference_lines={"teacher ensemble (dev)": 93.0})
    assert seen == [{"teacher ensemble (dev)": 93.0, CE_ONLY_LABEL: 61.0}]


def test_empty_runs_dir(tmp_path: Path) -> None:
    df = load_records(tmp_path)
    assert len(df) == 0 and list(aggregate(df).columns) == SUMMARY_COLUMNS
    written = write_report(df, tmp_path / "out")
    assert {p.name for p in written} == {"runs.csv", "runs.md", "summary.csv", "summary.md", "cost.csv", "cost.md",
                                         "differences.csv", "differences.md"}


def test_figures_of_a_student_named_by_a_path_stay_in_the_report_folder(df: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "report"
    written = write_report(df.assign(student="hf:/models/mini-3l"), out)
    figures = sorted(p.name for p in written if p.suffix == ".png")
    assert all(p.parent == out for p in written) and len(figures) == 4
    assert all(name.startswith("cifar10_hf_mini-3l_") for name in figures)


def test_a_folder_of_one_run_says_there_is_nothing_to_compare_and_draws_nothing(tmp_path: Path) -> None:
    root = write_runs(tmp_path / "runs", [record((0, 1), 0, 85.0, student="hf:/models/deep/mini-3l")])
    written = write_report(load_records(root), tmp_path / "report")
    assert not [p for p in written if p.suffix == ".png"]
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## cifar10 / hf:mini-3l, experiment" in md  # a local folder named by its last part
    assert "- nothing to compare yet: no k-combination has both a multi-teacher run and a k = 1 run" in md


def test_differences_md_shows_one_equal_effort_row_when_worst_and_best_are_one_number():
    from mtd_cache.sweeps.tables import differences_markdown

    def row(k, name, est):
        return {"experiment": "e" * 64, "variant": "all runs", "k": k, "difference": name, "estimate": est,
                "ci_low": est - 0.01, "ci_high": est + 0.01, "p_positive": 0.9, "covers": "examples"}

    one = pd.DataFrame([row(2, "worst", 0.004), row(2, "eq_worst", 0.003), row(2, "eq_best", 0.003)])
    text = differences_markdown(one, {})
    assert "| all runs | 2 | eq (worst = best: one repeat) | 0.3 | -0.7 | 1.3 | 0.9 | examples |" in text
    assert "eq_best" not in text and "eq_worst" not in text and "| P(>0) |" in text
    three = pd.DataFrame([row(2, "eq_worst", 0.003), row(2, "eq_best", 0.005)])  # R >= 2: two numbers
    assert "| eq_worst | 0.3 |" in differences_markdown(three, {}) and "| eq_best | 0.5 |" in \
        differences_markdown(three, {})
