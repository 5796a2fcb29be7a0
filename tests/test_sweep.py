"""Sweeps: kill and restart, and the Ray and Slurm (submitit local) executors against the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mtd_cache.sweeps.execute import SweepConfig, run_sweep
from mtd_cache.sweeps.report import load_records
from mtd_cache.teachers import train_teachers
from mtd_cache.teachers.dump import run_dump

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    train_teachers("digits", [0, 1, 2], root / "teachers", "resnet8", None, {"epochs": 1, "batch_size": 512})
    return run_dump("digits", root / "teachers", root / "store.h5", [], {})


def _cfg(store: Path, out: Path) -> SweepConfig:
    return SweepConfig(stores=(str(store),), student="resnet8", pool=(0, 1, 2), repeats=1, out=str(out),
                       overrides={"epochs": 1, "batch_size": 512}, threads=1)


def _records(out: Path) -> dict[str, float]:
    df = load_records(out)
    return dict(zip(df["run_id"], df["metric"], strict=True))


@pytest.fixture(scope="module")
def local_sweep(store, tmp_path_factory) -> tuple[list, list, dict[str, float]]:
    """A local sweep of the pool 0-2 on two workers, then the same sweep again: both results, the records."""
    out = tmp_path_factory.mktemp("local")
    first = run_sweep(_cfg(store, out), workers=2)
    again = run_sweep(_cfg(store, out), workers=2)
    return first, again, _records(out)


@pytest.fixture(scope="module")
def local_records(local_sweep) -> dict[str, float]:
    return local_sweep[2]


@pytest.mark.slow
def test_local_sweep_runs_the_plan_once(local_sweep):
    first, again, records = local_sweep
    assert Counter(r["status"] for r in first) == {"done": 8}  # 7 subsets of 3 + the CE-only baseline
    assert [r["status"] for r in again] == []  # all done: nothing to run
    assert len(records) == 8


@pytest.mark.slow
def test_killed_sweep_restarts_without_duplicates(store, tmp_path, local_records):
    args = [str(BIN / "mtd-sweep"), "--store", str(store), "--student", "resnet8", "--pool", "0-2", "--repeats", "1",
            "--epochs", "1", "--set", "batch_size=512", "--workers", "1", "--out", str(tmp_path)]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = tmp_path / "sweep-events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not events.exists() or events.read_text().count('"finish"') < 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-run
    proc.wait()
    finished_before = set(_records(tmp_path))
    assert 3 <= len(finished_before) < 8
    assert subprocess.run(args, capture_output=True).returncode == 0
    log = [json.loads(line) for line in events.read_text().splitlines()]
    finishes = Counter(e["run_id"] for e in log if e["event"] == "finish")
    assert set(finishes) == set(local_records) and set(finishes.values()) == {1}  # every run finished once
    assert _records(tmp_path) == local_records  # same runs, same CPU metrics


@pytest.mark.slow
def test_ray_executor_gives_the_local_records(store, tmp_path, local_records):
    pytest.importorskip("ray")
    run_sweep(_cfg(store, tmp_path), workers=2, executor="ray")
    assert _records(tmp_path) == local_records


@pytest.mark.slow
def test_slurm_executor_through_submitit_local(store, tmp_path, local_records):
    pytest.importorskip("submitit")
    run_sweep(_cfg(store, tmp_path), executor="slurm", slurm={"cluster": "local", "timeout_min": 10})
    assert _records(tmp_path) == local_records
    folders = list((tmp_path / "slurm").iterdir())  # submitit's pickles: in a folder made fresh for this sweep
    assert len(folders) == 1 and folders[0].name.startswith("sweep-")


@pytest.mark.slow
def test_dry_run_plans_and_estimates(store, tmp_path, local_records):
    r = subprocess.run([str(BIN / "mtd-sweep"), "--store", str(store), "--student", "resnet8", "--pool", "0-2",
                        "--repeats", "2", "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "16 planned"
    assert "16 jobs: 14 students, 2 CE-only, 0 stage-1; 0 done, 16 to run" in r.stderr
    assert not list(tmp_path.glob("*/*/*.json"))


@pytest.mark.slow
def test_a_job_s_lines_show_while_it_runs_and_a_dead_student_reads_dead(store, tmp_path):
    """The training loop's periodic lines and epochs (MTD_PROGRESS_S), from the worker, each prefixed by its job;
    a student that learnt nothing (lr 1e-12: the untrained network, one class for every digit) finishes ``dead``."""
    env = {**os.environ, "MTD_PROGRESS_S": "0.000001"}
    r = subprocess.run([str(BIN / "mtd-sweep"), "--store", str(store), "--student", "resnet8", "--pool", "0-1",
                        "--repeats", "1", "--workers", "2", "--threads", "1", "--set", "epochs=2", "--set",
                        "batch_size=512", "--set", "lr=1e-12", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    job = "[k=2 teachers 0,1 seed 0] "
    steps = [line for line in lines if f"{job}mtd_cache.core.progress: resnet8 k=2 epoch 1/2: 1/3 steps (33%)" in line]
    last = [line for line in lines if f"{job}mtd_cache.core.progress: resnet8 k=2 epoch 2/2: 3/3 steps (100%)" in line]
    assert len(steps) == 1 and len(last) == 1, r.stderr
    assert not [line for line in lines if "mtd_cache.core.fit" in line]  # per-epoch lines: -v
    assert steps[0].index(job) == 9  # after the time of day, HH:MM:SS
    finished = [line for line in lines if "] k=2 teachers 0,1 seed 0: " in line]
    assert len(finished) == 1 and ": dead, accuracy 0." in finished[0], r.stderr
