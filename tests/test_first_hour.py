"""A researcher's first hour: progress in a log, skips only of what matches, offline in one line, estimates from
the plan's configuration, students kept and scored again, settings documented."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_text import make_bert, sst2_words, write_sst2

from mtd_cache.core.errors import MtdError
from mtd_cache.core.fit import Fit, fit
from mtd_cache.core.progress import Progress
from mtd_cache.models import bert
from mtd_cache.store import TeacherStore
from mtd_cache.students.run import RunRequest, evaluate_run, run_student
from mtd_cache.sweeps.execute import SweepConfig, run_sweep
from mtd_cache.sweeps.plan import Job, job_line
from mtd_cache.teachers import train_teachers
from mtd_cache.teachers.dump import run_dump

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- 1. progress in a log


def test_off_a_terminal_progress_is_a_periodic_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="mtd_cache.core.progress"):
        with Progress(10, "teacher seed 0 epoch 1/3", unit="step", interval=1e-9, terminal=False) as p:
            for _ in range(3):
                p.update(1, examples=32, loss=0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[-1].startswith("teacher seed 0 epoch 1/3: 3/10 steps (30%), ")
    assert " ex/s, loss 0.5, ETA " in lines[-1]


def test_fit_logs_its_steps_and_every_epoch_off_a_terminal(caplog, monkeypatch):
    monkeypatch.setenv("MTD_PROGRESS_S", "1e-9")
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    job = Fit(model=torch.nn.ParameterList([w]), optimizer=opt, epochs=2, desc="student k=2",
              batches=lambda e: [(torch.arange(4), None)] * 3, step=lambda b: {"loss": (w - 1).pow(2).sum()})
    with caplog.at_level(logging.INFO):
        fit(job, torch.device("cpu"))
    text = caplog.text
    assert "student k=2 epoch 1/2: 2/3 steps (67%)" in text and " ex/s, loss " in text
    assert "student k=2 epoch 1/2: loss" in text  # every epoch's summary, not the last only


def test_a_sweep_prints_one_line_per_finished_job():
    job = Job(kind="student", teachers=(0, 3), primary=3, repeat=0, seed=1, store_index=0)
    line = job_line(job, {"status": "done", "metric": 0.83125, "wall_s": 41.2}, 5, 16, 200.0)
    assert line == "[5/16] k=2 teachers 0,3 primary 3 seed 1: done, metric 0.8313 in 41s; ETA 7m20s"
    failed = job_line(Job("baseline", (), None, 0, 0, 0), {"status": "failed", "error": "MtdError: x"}, 16, 16, 9)
    assert failed == "[16/16] CE-only seed 0: failed: MtdError: x; sweep done"


# ----------------------------------------------------------------------------- 3. skips only what matches


@pytest.fixture(scope="module")
def sst2_teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour")
    data = write_sst2(root / "glue", 48, 16)
    base = make_bert(root / "base", sst2_words())
    opts = {"lr": 5e-3, "epochs": 1, "batch_size": 16, "max_length": 32}
    train_teachers("sst-2", [0, 1], root / "t", str(base), str(data), opts, device="cpu", force=True)
    return root, data, base, opts


def test_a_teacher_folder_is_reused_only_for_the_same_model_and_settings(sst2_teachers, caplog):
    root, data, base, opts = sst2_teachers
    with caplog.at_level(logging.INFO):
        again = train_teachers("sst-2", [0, 1], root / "t", str(base), str(data), opts, device="cpu")
    assert [t.seed for t in again] == [0, 1] and "done already with these settings" in caplog.text
    with pytest.raises(MtdError, match=r"seed0 holds a teacher trained with lr=0.005 \(requested 0.0001\): give "
                                       r"another --out, or --force to train it again"):
        train_teachers("sst-2", [0], root / "t", str(base), str(data), {**opts, "lr": 1e-4}, device="cpu")
    with pytest.raises(MtdError, match=r"holds a teacher trained with model '.*base', not the requested 'other'"):
        train_teachers("sst-2", [0], root / "t", "other", str(data), opts, device="cpu")


def test_a_store_is_reused_only_when_it_holds_this_dump(sst2_teachers, caplog):
    root, data, _, _ = sst2_teachers
    out = root / "s.h5"
    run_dump("sst-2", root / "t", out, [], {"max_length": 32})
    stamp = out.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        run_dump("sst-2", root / "t", out, [], {"max_length": 32})
    assert out.stat().st_mtime_ns == stamp and "holds this dump already" in caplog.text
    with pytest.raises(MtdError, match=r"s.h5 was dumped otherwise \(.*max_length.*32 there, 24 asked.*\): give "
                                       r"another --out, or --force to dump again"):
        run_dump("sst-2", root / "t", out, [], {"max_length": 24})
    run_dump("sst-2", root / "t", out, [], {"max_length": 24}, force=True)
    assert TeacherStore.open(out).max_length == 24
    shutil.copytree(root / "t", root / "moved")  # the same teachers found elsewhere: the same dump
    stamp = out.stat().st_mtime_ns
    run_dump("sst-2", root / "moved", out, [], {"max_length": 24})
    assert out.stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- 4. offline in one line


def test_an_unreachable_hub_name_fails_at_once_naming_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    t0 = time.perf_counter()
    with pytest.raises(MtdError) as err:
        bert.load_classifier("bert-base-uncased", 2, hint="give a local folder: --model PATH")
    assert time.perf_counter() - t0 < 5
    assert str(err.value) == ("the model 'bert-base-uncased': not a local folder, not in the Hugging Face cache, "
                              "and the Hub cannot be reached (HF_HUB_OFFLINE is set): give a local folder: "
                              "--model PATH")


def test_teachers_offline_is_one_line_and_leaves_no_folder(tmp_path):
    data = write_sst2(tmp_path / "glue", 16, 8)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": str(BIN)}
    r = subprocess.run([str(BIN / "mtd-cache"), "teachers", "--task", "sst-2", "--seeds", "2", "--data-dir",
                        str(data), "--out", str(tmp_path / "t")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the tokenizer 'bert-base-uncased': not a local folder" in r.stderr
    assert "--model PATH (make teachers MODEL=PATH" in r.stderr
    assert not (tmp_path / "t").exists()  # nor the folder made for it


# ----------------------------------------------------------------------------- 6, 9: estimates; students kept


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


def test_students_are_kept_and_scored_again(digits_store, tmp_path):
    _, store = digits_store
    out = tmp_path / "runs"
    r = subprocess.run([str(BIN / "mtd-train"), "--store", str(store), "--student", "resnet8", "--teachers", "0,1",
                        "--epochs", "1", "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    weights = out / "digits" / "resnet8" / f"{rec['run_id']}.model.safetensors"
    assert weights.exists()
    again = evaluate_run(rec["run_id"][:10], str(out), device="cpu")
    assert again["metric"] == pytest.approx(rec["metric"], abs=1e-9) and again["recorded_metric"] == rec["metric"]
    cli = subprocess.run([str(BIN / "mtd-train"), "--evaluate", rec["run_id"], "--out", str(out)],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and json.loads(cli.stdout)["metric"] == pytest.approx(rec["metric"], abs=1e-9)
    skip = run_student(RunRequest(store=str(store), student="resnet8", teachers=(1,), out=str(tmp_path / "r2"),
                                  overrides={"epochs": 1}, device="cpu"))
    assert "model_file" not in skip and not list((tmp_path / "r2").rglob("*.safetensors"))
    with pytest.raises(MtdError, match="kept no weights"):
        evaluate_run(skip["run_id"], str(tmp_path / "r2"))


# ----------------------------------------------------------------------------- 8. settings documented


def test_the_readme_settings_tables_are_generated_from_the_recipes():
    r = subprocess.run([sys.executable, str(ROOT / "bin" / "settings_tables.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    readme = (ROOT / "README.md").read_text()
    for key in ("student_layers", "ild_epochs", "init_from_teacher", "alpha_hidden", "kd_rule"):
        assert f"| `{key}` |" in readme
    h = subprocess.run([str(BIN / "mtd-train"), "--student", "tinybert", "--help-settings"], capture_output=True,
                       text=True)
    assert h.returncode == 0 and "ild_epochs" in h.stdout and "tinybert: recipe tinybert" in h.stdout
