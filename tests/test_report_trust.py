"""Results a reader can trust: experiments kept apart, predictions kept, intervals worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mtd_cache.students.record import experiment_identity, make_experiment_id
from mtd_cache.sweeps.records import load_records
from mtd_cache.sweeps.report import summarize, write_report

M = 100  # evaluation examples


def _experiment(temperature: float, store: str = "f" * 64) -> tuple[str, dict]:
    ident = experiment_identity("digits", "resnet8", {"temperature": temperature, "epochs": 1}, [store],
                                ["a" * 64, "b" * 64], False)
    return make_experiment_id(ident), ident


def write_run(root: Path, run_id: str, teachers: tuple[int, ...], seed: int, correct: np.ndarray,
              temperature: float = 4.0, keep_predictions: bool = True, **extra) -> None:
    """A finished record whose predictions are right exactly where ``correct`` is (labels: 0..9 cycling)."""
    folder = root / "digits" / "resnet8"
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(M) % 10
    pred = np.where(correct, labels, (labels + 1) % 10)
    exp, ident = _experiment(temperature)
    rec = {"run_id": run_id, "kind": "student" if teachers else "baseline", "experiment": exp,
           "experiment_identity": ident, "task": "digits", "student": "resnet8", "teachers": list(teachers),
           "primary": None, "k": len(teachers), "seed": seed, "metric_name": "accuracy",
           "metric": float(correct.mean()), "wall_s": 1.0, "energy_j": None, "status": "done",
           "predictions": f"{run_id}.predictions.npz" if keep_predictions else None, **extra}
    if keep_predictions:
        np.savez(folder / f"{run_id}.predictions.npz", pred=pred.astype(np.int16), label=labels.astype(np.int16))
    (folder / f"{run_id}.json").write_text(json.dumps(rec))


def right(n: int, extra: tuple[int, ...] = ()) -> np.ndarray:
    """Right on the first ``n`` examples, and on ``extra`` ones."""
    c = np.zeros(M, bool)
    c[:n] = True
    c[list(extra)] = True
    return c


def pool_of_two(root: Path, temperature: float = 4.0, shift: int = 0) -> None:
    """Teachers 0 and 1: single runs right on 90 and 95 examples, the pair on run 0's 90 and one more."""
    write_run(root, f"t{temperature}-0", (0,), 0, right(90 + shift), temperature)
    write_run(root, f"t{temperature}-1", (1,), 0, right(95 + shift), temperature)
    write_run(root, f"t{temperature}-01", (0, 1), 0, right(90 + shift, (96 + shift,)), temperature)


def test_one_example_apart_gives_the_interval_worked_out_by_hand(tmp_path):
    pool_of_two(tmp_path)
    summary, diffs, notes = summarize(load_records(tmp_path), n_resamples=9999, seed=0)
    k2 = diffs[(diffs["k"] == 2) & (diffs["difference"] == "worst")].iloc[0]
    # multi worst - single worst = acc(0,1) - min(acc 0, acc 1) = acc(0,1) - acc 0 (run 1 is right wherever run 0
    # is): in a resample, 1/M times the draws of the one example run (0,1) adds, Binomial(M, 1/M). One repeat:
    # the basic interval, [2 θ̂ - Q(0.975), 2 θ̂ - Q(0.025)], and P(> 0) = P(2 θ̂ - θ* > 0) = P(Binomial <= 1).
    q_lo, q_hi = stats.binom.ppf([0.025, 0.975], M, 1 / M) / M
    assert (q_lo, q_hi) == (0.0, 0.03)
    got = (k2["estimate"], k2["ci_low"], k2["ci_high"], k2["covers"], k2["method"])
    assert got == pytest.approx((0.01, 0.02 - q_hi, 0.02 - q_lo, "examples", "basic"), abs=1e-12)
    assert k2["p_positive"] == pytest.approx(stats.binom.cdf(1, M, 1 / M), abs=0.015)  # 0.736
    row = summary[summary["k"] == 2].iloc[0]
    assert row["eval_examples"] == M and row["multi_min_mean"] == pytest.approx(0.91)
    assert row["multi_min_ci_low"] <= 0.91 <= row["multi_min_ci_high"]
    (exp,) = notes
    assert notes[exp][0].startswith("evaluation set: 100 examples: one example = 1 points")
    assert notes[exp][1].startswith("1 repeat (one student seed per run): the intervals cover the evaluation "
                                    "examples only; the seed lottery's spread is not estimable from one repeat. 2 "
                                    "repeats make it estimable")


def test_identical_predictions_give_a_zero_width_interval(tmp_path):
    same = right(80)
    for rid, ts in (("a", (0,)), ("b", (1,)), ("ab", (0, 1))):
        write_run(tmp_path, rid, ts, 0, same)
    _, diffs, _ = summarize(load_records(tmp_path), n_resamples=500)
    for _, d in diffs[diffs["k"] == 2].iterrows():
        if d["difference"].startswith("selection"):
            assert d["estimate"] == 0.0 and np.isnan(d["ci_low"])  # an estimate only
            continue
        assert (d["estimate"], d["ci_low"], d["ci_high"], d["p_positive"]) == (0.0, 0.0, 0.0, 0.0)


def test_two_configurations_are_two_experiments_each_as_if_alone(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "alone"
    pool_of_two(both, 4.0)
    pool_of_two(both, 2.0, shift=-30)  # another temperature: much worse students
    pool_of_two(alone, 4.0)
    df = load_records(both)
    assert df["experiment"].nunique() == 2
    written = {p.name for p in write_report(df, tmp_path / "report", n_resamples=200)}
    exp4, exp2 = _experiment(4.0)[0], _experiment(2.0)[0]
    assert {f"digits_resnet8_{exp4[:8]}_score_vs_k.png", f"digits_resnet8_{exp2[:8]}_score_vs_k.png"} <= written
    together = pd.read_csv(tmp_path / "report" / "summary.csv")
    write_report(load_records(alone), tmp_path / "report-alone", n_resamples=200)
    single = pd.read_csv(tmp_path / "report-alone" / "summary.csv")
    mine = together[together["experiment"] == exp4].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, single)  # pooling the other configuration changes nothing
    assert mine.loc[mine["k"] == 2, "multi_min_mean"].item() == pytest.approx(0.91)  # not 0.61 (temperature 2)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert f"experiment {exp2[:8]}: temperature=2.0" in md and f"experiment {exp4[:8]}: temperature=4.0" in md


def test_records_without_the_key_still_report(tmp_path):
    pool_of_two(tmp_path)
    folder = tmp_path / "digits" / "resnet8"
    exp = _experiment(4.0)[0]
    for path in folder.glob("*.json"):  # as written before the key existed, with their configuration
        rec = json.loads(path.read_text())
        for key in ("experiment", "experiment_identity"):
            rec.pop(key)
        rec.update(config={"recipe": {"temperature": 4.0, "epochs": 1}, "online": False},
                   store_fingerprint="f" * 64, teachers_sha256=["a" * 64, "b" * 64])
        path.write_text(json.dumps(rec))
    df = load_records(tmp_path)
    assert set(df["experiment"]) == {exp}  # rebuilt from the stored configuration: the same key
    write_run(tmp_path, "bare", (0,), 1, right(50), keep_predictions=False)
    rec = json.loads((folder / "bare.json").read_text())
    for key in ("experiment", "experiment_identity"):
        rec.pop(key)
    (folder / "bare.json").write_text(json.dumps(rec))
    df = load_records(tmp_path)
    assert sorted(set(df["experiment"])) == sorted({exp, "unassigned"})
    summary, _, notes = summarize(df, n_resamples=100)
    assert set(summary["experiment"]) == {exp, "unassigned"}  # reported, apart
    mine = summary[(summary["experiment"] == exp) & (summary["k"] == 1)]
    assert mine["multi_min_mean"].item() == (0.9 + 0.95) / 2


def test_dead_runs_are_flagged_and_counted(tmp_path):
    pool_of_two(tmp_path)
    write_run(tmp_path, "dead", (1,), 1, right(0, tuple(range(0, M, 10))))  # right only on class 0: one class
    df = load_records(tmp_path)
    assert df.set_index("run_id").loc["dead", "dead"] == True  # noqa: E712 - a bool column
    assert not df.set_index("run_id").loc["t4.0-0", "dead"]
    summary, diffs, notes = summarize(df, n_resamples=100)
    main = summary[summary["variant"] == "all runs"].set_index("k")
    assert main.loc[1, "single_dead"] == 1 and main.loc[2, "multi_dead"] == 0
    # kept in the main numbers: teacher 1's single-teacher worst is the dead run (right on 10 of 100)
    assert main.loc[2, "single_min_mean"] == pytest.approx(0.10) and main.loc[2, "n_combinations"] == 1
    assert main.loc[1, "multi_min_mean"] == pytest.approx((0.90 + 0.10) / 2)
    # the dead-excluded variant drops every combination holding teacher 1, in both modes
    excluded = summary[summary["variant"] == "dead excluded"].set_index("k")
    assert excluded.loc[1, "n_combinations"] == 1 and excluded.loc[1, "multi_min_mean"] == pytest.approx(0.90)
    assert excluded.loc[2, "n_combinations"] == 0 and np.isnan(excluded.loc[2, "multi_min_mean"])
    worst = diffs[(diffs["k"] == 2) & (diffs["difference"] == "worst")].set_index("variant")
    assert worst.loc["all runs", "estimate"] == pytest.approx(0.91 - 0.10)
    assert np.isnan(worst.loc["dead excluded", "estimate"])
    assert any(n.startswith("1 dead runs") for n in next(iter(notes.values())))
