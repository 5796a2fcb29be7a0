"""sweeps/records.py: run records read into experiments, each reported as if alone; old records without the key."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from factories import experiment_of, pool_of_two, right, write_run

from mtd_cache.sweeps.records import load_records
from mtd_cache.sweeps.report import summarize, write_report


@pytest.mark.slow
def test_two_configurations_are_two_experiments_each_as_if_alone(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "alone"
    pool_of_two(both, 4.0)
    pool_of_two(both, 2.0, shift=-30)  # another temperature: much worse students
    pool_of_two(alone, 4.0)
    df = load_records(both)
    assert df["experiment"].nunique() == 2
    written = {p.name for p in write_report(df, tmp_path / "report", n_resamples=200)}
    exp4, exp2 = experiment_of(4.0)[0], experiment_of(2.0)[0]
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
    exp = experiment_of(4.0)[0]
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


def test_a_tinybert_stage1_record_is_passed_over_quietly_and_anything_else_is_named(tmp_path, caplog):
    write_run(tmp_path, "a" * 64, (0, 1), 0, right(50))
    stage1 = tmp_path / "mrpc" / "tinybert" / "stage1" / ("b" * 64)
    stage1.mkdir(parents=True)
    (stage1 / "stage1.json").write_text(json.dumps({"stage1_id": "b" * 64, "metric_name": "ild_loss",
                                                    "metric": 6.7}))
    (tmp_path / "mrpc" / "notes.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert load_records(tmp_path)["run_id"].tolist() == ["a" * 64]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"skipping {tmp_path / 'mrpc' / 'notes.json'}"]
