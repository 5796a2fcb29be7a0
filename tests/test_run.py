"""Run hardening: settings checked before any work, sweep workers that die with their parent, one result per run id."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import killed_after

from mtd_cache.cli.common import run_command
from mtd_cache.core.checkpoints import load_state
from mtd_cache.core.errors import MtdError
from mtd_cache.students.run import RunRequest, evaluate_run, run_student
from mtd_cache.teachers import train_teachers
from mtd_cache.teachers.dump import run_dump
from mtd_cache.teachers.importer import import_arrays

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> Path:
    """An imported store of 6 teachers, logits only (nothing here trains on it: every case fails first)."""
    root = tmp_path_factory.mktemp("six")
    rng = np.random.default_rng(0)
    views = np.array([(dy, dx, 0) for dy in range(3) for dx in range(3)], dtype=np.int16)
    return import_arrays(root / "s.h5", "blobs", rng.normal(size=(20, 9, 6, 10)).astype(np.float32),
                         np.arange(20) % 10, views=views)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Three tiny trained digits teachers and their store (for the runs that do train)."""
    root = tmp_path_factory.mktemp("digits3")
    train_teachers("digits", [0, 1, 2], root / "t", "resnet8", None, {"epochs": 1, "train_subset": 100}, device="cpu")
    return run_dump("digits", root / "t", root / "s.h5", [], {"train_subset": 300, "test_subset": 60})


def _main(module: str, args: list, capsys) -> tuple[int, list[str]]:
    from importlib import import_module

    with pytest.raises(SystemExit) as done:
        prog = {"student": "mtd-train"}.get(module, f"mtd-{module}")  # the command, by the module that holds it
        run_command(import_module(f"mtd_cache.cli.{module}").cli, [str(a) for a in args], prog=prog)
    return done.value.code, capsys.readouterr().err.strip().splitlines()


T = ["--student", "resnet8", "--teachers", "0,2,5", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize("extra, message", [
    (["--set", "batch_size=-4"], "--set batch_size=-4 is out of range: expected >= 1"),
    (["--epochs", "0"], "--epochs 0 is out of range: expected >= 1"),
    (["--epochs", "-3"], "--epochs -3 is out of range: expected >= 1"),
    (["--lr", "-1"], "--lr -1.0 is out of range: expected > 0"),
    (["--batch-size", "0"], "--batch-size 0 is out of range: expected >= 1"),
    (["--temperature", "0"], "--temperature 0.0 is out of range: expected > 0"),
    (["--seed", "18446744073709551616"], "Invalid value for '--seed': 18446744073709551616 is not in the range "
                                         "0<=x<=4294967295"),
    (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295"),
    (["--set", "lr=abc"], "--set lr=abc: expected a number"),
    (["--set", "epochs=1.5"], "--set epochs=1.5: expected an integer"),
    (["--set", "epochs=0"], "--set epochs=0 is out of range: expected >= 1"),
    (["--set", "kd_scale=batchmean"], "unknown kd_scale 'batchmean'; valid: sum_t2, sum, mean "
                                      "(--set kd_scale=batchmean)"),
    (["--teachers", "0-99999999999"], "--teachers: index 99999999999 out of range: the store has 6 teachers (0-5)"),
    (["--teachers", "0,2", "--primary", "2"], "--primary 2 given, but this student takes no primary teacher"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_bad_train_settings_are_one_line_exit_2_with_nothing_written(six, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    args = ["--store", six, *T, "--out", out, *extra]
    if "--teachers" in extra:  # replace the default teacher set
        i = args.index("--teachers")
        del args[i:i + 2]
    t0 = time.perf_counter()
    code, err = _main("student", args, capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and time.perf_counter() - t0 < 10  # refused before any work (0-99999999999 too)


def test_out_pointing_at_a_file_is_refused(six, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    code, err = _main("student", ["--store", six, *T, "--out", tmp_path / "f"], capsys)
    assert code == 2 and err == [f"mtd-train: error: Invalid value for '--out': '{tmp_path / 'f'}': is a file, "
                                 "not a folder"]


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1"),
    (["--set", "epochs=1.5"], "--set epochs=1.5: expected an integer"),
    (["--pool", "0-9"], "--pool: index 9 out of range: "),
    (["--repeats", "0"], "Invalid value for '--repeats': 0 is not in the range x>=1"),
], ids=["workers", "epochs-float", "pool", "repeats"])
def test_bad_sweep_settings_are_refused_before_the_first_job(six, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, err = _main("sweep", ["--store", six, "--student", "resnet8", "--pool", "0-2", "--out", out, *extra],
                      capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "--teachers" not in err[0] and not out.exists()  # no lock, no event, no record


# ----------------------------------------------------------------------------- processes


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(c) for c in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sweep(store: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "mtd-sweep"), "--store", str(store), "--student", "resnet8", "--pool", "0-2",
                             "--repeats", "1", "--device", "cpu", "--out", str(out), "--threads", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_starts(out: Path, n: int, timeout: float = 120) -> None:
    events = out / "sweep-events.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if events.exists() and events.read_text().count('"start"') >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} runs started in {timeout} s")


@pytest.mark.slow
def test_workers_die_with_a_killed_sweep(digits, tmp_path):
    sweep = _sweep(digits, tmp_path / "runs", "--workers", "2", "--epochs", "30")
    _wait_for_starts(tmp_path / "runs", 2)
    workers = {c for c in _children(sweep.pid) if _alive(c)}
    assert len(workers) >= 2, workers  # two workers (and the resource tracker)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    t0 = time.time()
    while any(_alive(p) for p in workers) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "workers outlived their sweep"


@pytest.mark.slow
def test_the_survivor_of_two_sweeps_finishes_the_plan(digits, tmp_path):
    out = tmp_path / "runs"
    a = _sweep(digits, out, "--epochs", "6")
    _wait_for_starts(out, 1)
    b = _sweep(digits, out, "--epochs", "6")
    _wait_for_starts(out, 2)
    a.send_signal(signal.SIGKILL)  # a dies holding a run's lock
    a.wait()
    stdout, stderr = b.communicate(timeout=600)
    assert b.returncode == 0, stderr
    records = [json.loads(p.read_text()) for p in (out / "digits" / "resnet8").glob("*.json")]
    assert len(records) == 8 and all(r["status"] == "done" for r in records)  # 7 subsets + the CE-only baseline
    assert len({r["run_id"] for r in records}) == 8
    assert "locked" not in stdout


@pytest.mark.slow
def test_two_trainings_of_one_run_train_it_once(digits, tmp_path):
    args = [str(BIN / "mtd-train"), "--store", str(digits), "--student", "resnet8", "--teachers", "0,1",
            "--epochs", "3", "--device", "cpu", "--out", str(tmp_path)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    first, second = (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)
    assert first == second  # the same record, wall time included: the second waited and reused it


# ----------------------------------------------------------------------------- threads and costs


def test_a_resume_on_another_thread_count_is_refused_and_costs_add_up(digits, tmp_path):
    req = RunRequest(store=str(digits), student="resnet8", teachers=(0, 1), out=str(tmp_path), device="cpu",
                     overrides={"epochs": 3})
    threads = torch.get_num_threads()
    killed_after("fit._save_checkpoint", run_student, req)  # stopped after its first epoch's checkpoint
    ckpts = list(tmp_path.glob("digits/resnet8/*.ckpt.safetensors"))
    assert len(ckpts) == 1
    first_part = load_state(ckpts[0])["cost"]["wall_s"]
    other = 1 if threads > 1 else 2
    torch.set_num_threads(other)
    try:
        with pytest.raises(MtdError, match=f"was written by a run on {threads} CPU threads, this process has {other}"
                                           f": resumed, it would compute other numbers"):
            run_student(req)
    finally:
        torch.set_num_threads(threads)
    rec = run_student(req)
    assert rec["threads"] == threads and len(rec["history"]) == 3
    assert rec["wall_s"] == pytest.approx(first_part + rec["wall_s_this_part"])  # every part counted
    assert rec["wall_s"] > rec["wall_s_this_part"] > 0


@pytest.mark.slow
def test_a_sweep_resumed_on_another_thread_count_is_refused(digits, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--store", digits, "--student", "resnet8", "--pool", "0-1", "--repeats", "1", "--epochs", "1",
            "--device", "cpu", "--out", out]
    assert _main("sweep", [*args, "--threads", "1"], capsys)[0] == 0
    victim = next((out / "digits" / "resnet8").glob("*.json"))
    victim.unlink()  # one run to redo
    code, err = _main("sweep", [*args, "--threads", "2"], capsys)
    assert code == 2 and "this sweep's runs so far ran on 1 CPU threads each" in err[-1] and "--threads 1" in err[-1]
    assert _main("sweep", [*args, "--threads", "1"], capsys)[0] == 0 and victim.exists()


BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour_digits")
    train_teachers("digits", [0, 1], root / "teachers", "resnet8", None, {"epochs": 1, "batch_size": 256})
    return root, run_dump("digits", root / "teachers", root / "s.h5", [], {})


@pytest.mark.slow
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
