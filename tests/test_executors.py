"""Sweep faults: a worker killed by the system is a failed job (retried once, then named, exit 4), never a crash of
the sweep; --executor slurm without Slurm is one line, exit 2, unless --slurm-local."""

from __future__ import annotations

import json

import pytest
import sweep_killer
from cli_runner import run_cli

from mtd_cache.sweeps import execute

ALWAYS, ONCE = "student/t0-1/pnone/r0/s0/store0", "student/t1/pnone/r0/s0/store0"


@pytest.mark.slow
def test_a_killed_worker_is_a_failed_job_retried_once_and_named(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(execute, "execute", sweep_killer.execute)  # what the pool's workers run
    monkeypatch.setenv("MTD_TEST_KILL_ALWAYS", ALWAYS)
    monkeypatch.setenv("MTD_TEST_KILL_ONCE", ONCE)
    out = tmp_path / "runs"
    r = run_cli("mtd-sweep", "--store", tiny["image"], "--student", "resnet8", "--pool", "0-1", "--repeats", "1",
                "--epochs", "1", "--device", "cpu", "--workers", "1", "--threads", "1", "--out", out)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr and "BrokenProcessPool" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"mtd-sweep: error: 1 of 4 runs are not done (3 done, 1 failed); the first is {ALWAYS}: its worker process "
        "was killed (SIGKILL: out of memory?) 2 times; run the sweep again to retry them")
    assert f"{ONCE}: its worker process was killed (SIGKILL: out of memory?); running it again" in r.stderr
    done = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert sorted(rec["teachers"] for rec in done) == [[], [0], [1]] and all(rec["status"] == "done" for rec in done)


def test_slurm_without_slurm_is_refused_unless_asked_to_run_locally(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    out = tmp_path / "runs"
    args = ["--store", tiny["image"], "--student", "resnet8", "--pool", "0", "--repeats", "1", "--epochs", "1",
            "--device", "cpu", "--out", out, "--executor", "slurm"]
    r = run_cli("mtd-sweep", *args)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "mtd-sweep: error: --executor slurm: there is no Slurm here (sbatch is not on PATH); run on a Slurm login "
        "node, or give --slurm-local to run the jobs as local processes through submitit")
    assert not out.exists()
    r = run_cli("mtd-sweep", *args, "--slurm-local", "--dry-run")  # accepted (test_sweep.py runs jobs that way)
    assert r.returncode == 0 and r.stdout.strip() == "2 planned", r.stderr


def test_a_ray_or_slurm_job_whose_process_died_is_a_failed_job_named_by_its_key():
    from mtd_cache.sweeps.executors import died, run_scheduled
    from mtd_cache.sweeps.plan import plan_sweep

    jobs = plan_sweep([0, 1], "resnet8", 1, bert_student=False, two_stage=False)
    crash = RuntimeError("The actor died unexpectedly before finishing this task (SIGKILL)")
    results = run_scheduled(jobs, lambda ready: ready, lambda running: (running[0], died(crash)))
    assert [r["key"] for r in results] == [j.key for j in jobs]
    assert {r["status"] for r in results} == {"failed"} and results[0]["error"] == (
        "its process died (RuntimeError: The actor died unexpectedly before finishing this task (SIGKILL))")


def test_a_lost_job_s_line_says_how_its_worker_ended():
    """From the dead workers' exit codes when the event log cannot say whose job it was: a worker that exits as
    it starts is not reported as killed (out of memory), as it was."""
    import signal
    from types import SimpleNamespace

    from mtd_cache.sweeps.executors import _killed_jobs, death
    from mtd_cache.sweeps.plan import Job

    lost = [Job("student", (0, 1), None, 0, 0, 0), Job("student", (1,), None, 0, 0, 0)]
    procs = {11: SimpleNamespace(exitcode=1), 12: SimpleNamespace(exitcode=1)}
    causes = _killed_jobs(lost, procs, "/nonexistent")
    assert [death(causes[j.key]) for j in lost] == ["exited (exit status 1)"] * 2
    procs = {11: SimpleNamespace(exitcode=-signal.SIGKILL), 12: SimpleNamespace(exitcode=-signal.SIGTERM)}
    assert death(_killed_jobs(lost, procs, "/nonexistent")[lost[0].key]) == "was killed (SIGKILL: out of memory?)"
    procs = {11: SimpleNamespace(exitcode=-signal.SIGSEGV), 12: SimpleNamespace(exitcode=1)}  # disagree
    assert death(_killed_jobs(lost, procs, "/nonexistent")[lost[0].key]) == "died"
    assert death("SIGSEGV") == "was killed (SIGSEGV)"
