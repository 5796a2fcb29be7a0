"""core/progress.py: progress on a terminal and in a log (a line a minute), the training loop's and the sweep's
lines."""

from __future__ import annotations

import logging

import torch

from mtd_cache.core.fit import Fit, fit
from mtd_cache.core.progress import Progress
from mtd_cache.sweeps.plan import Job, job_line


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


def test_a_finished_job_says_dead_and_a_stage1_job_names_its_loss():
    job = Job(kind="student", teachers=(0, 3), primary=None, repeat=0, seed=1, store_index=0)
    dead = job_line(job, {"status": "done", "metric": 0.495, "metric_name": "accuracy", "wall_s": 3.0,
                          "dead": True}, 1, 2, 3.0)
    assert dead == "[1/2] k=2 teachers 0,3 seed 1: dead, accuracy 0.4950 in 3s; ETA 3s"
    stage1 = job_line(Job("stage1", (0, 1), 1, 0, 0, 0), {"status": "done", "metric": 6.70581,
                                                          "metric_name": "ild_loss", "wall_s": 61}, 2, 2, 9)
    assert stage1 == "[2/2] stage 1 primary 1 seed 0: done, stage-1 loss 6.7058 in 1m01s; sweep done"


def test_a_sweep_worker_s_lines_carry_its_job_and_it_draws_no_bar(capfd):
    import mtd_cache.core.progress as progress

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        progress.job_logging("k=2 teachers 0,1 seed 0")
        progress.job_logging("k=1 teachers 2 seed 0")  # the next job in the same worker: one handler, renamed
        assert sum(isinstance(f, progress._JobPrefix) for h in root.handlers for f in h.filters) == 1
        assert Progress(3, "x", terminal=None).bar is None  # never a bar in a worker, even on a terminal
        with Progress(3, "resnet8 k=1 epoch 1/2", unit="step", interval=1e-9) as p:
            p.update(1, loss=0.5)
        logging.getLogger("mtd_cache.core.fit").info("resnet8 k=1 epoch 1/2: loss 0.5")  # the sweep line's twin
        logging.getLogger("mtd_cache.students.run").warning("something to know")
        lines = capfd.readouterr().err.splitlines()
        assert [line[9:] for line in lines] == [
            "[k=1 teachers 2 seed 0] mtd_cache.core.progress: " + lines[0].split("progress: ")[1],
            "[k=1 teachers 2 seed 0] mtd_cache.students.run: something to know"]
        assert lines[0].split("progress: ")[1].startswith("resnet8 k=1 epoch 1/2: 1/3 steps (33%)")
        progress.job_logging("k=1 teachers 2 seed 0", logging.DEBUG)  # -v: every line
        logging.getLogger("mtd_cache.core.fit").info("epoch 2/2: loss 0.4")
        assert capfd.readouterr().err.endswith(" [k=1 teachers 2 seed 0] mtd_cache.core.fit: epoch 2/2: loss 0.4\n")
    finally:
        progress._JOB["name"] = ""
        progress.log.setLevel(logging.NOTSET)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
