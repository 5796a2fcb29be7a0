"""sweeps/estimate.py: a dry run's cost, calibrated by timing a few steps, then measured from finished runs."""

from __future__ import annotations

import logging

import pytest

from mtd_cache.students.run import RunRequest, run_student
from mtd_cache.sweeps.execute import SweepConfig, run_sweep
from mtd_cache.teachers import train_teachers
from mtd_cache.teachers.dump import run_dump


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour_digits")
    train_teachers("digits", [0, 1], root / "teachers", "resnet8", None, {"epochs": 1, "batch_size": 256})
    return root, run_dump("digits", root / "teachers", root / "s.h5", [], {})


def test_a_dry_run_estimates_from_a_calibration_then_from_finished_runs(digits_store, tmp_path, caplog):
    _, store = digits_store
    cfg = SweepConfig(stores=(str(store),), student="resnet8", pool=(0, 1), repeats=1, out=str(tmp_path / "runs"),
                      overrides={"epochs": 2}, device="cpu", threads=1, save_models=True)
    with caplog.at_level(logging.DEBUG):
        run_sweep(cfg, dry_run=True)
    text = caplog.text
    assert "estimate: 1 CE-only x ~" in text and "calibrated: 3 steps of" in text and "x 12 steps x 2 epochs" in text
    assert "estimate: 3 students x ~" in text and "estimate: total ~" in text
    assert "--save-models: 4 x 307.2 kB" in text or "--save-models: 4 x" in text
    assert "planned: student/t0-1/pnone/r0/s0/store0" in text  # --verbose lists every job
    assert not (tmp_path / "runs").exists()
    run_student(RunRequest(store=str(store), student="resnet8", teachers=(0,), out=str(tmp_path / "runs"),
                           overrides={"epochs": 1}, device="cpu"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_sweep(cfg, dry_run=True)
    assert "measured: 1 finished runs, scaled to 1437 x 2 epochs" in caplog.text
