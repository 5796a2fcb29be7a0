"""A sweep job function whose worker process is killed by SIGKILL, as the out-of-memory killer would, for the jobs
``MTD_TEST_KILL_ALWAYS`` names (every time) and ``MTD_TEST_KILL_ONCE`` names (the first time): imported by the
sweep's spawned workers (tests/test_sweep_faults.py puts it in place of ``sweeps.execute.execute``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mtd_cache.students import run
from mtd_cache.sweeps import execute as jobs


def execute(job, cfg, wait=False):
    always = os.environ.get("MTD_TEST_KILL_ALWAYS", "").split(",")
    once = os.environ.get("MTD_TEST_KILL_ONCE", "").split(",")
    flag = Path(cfg.out) / f"killed-once-{job.key.replace('/', '_')}"
    if job.key in always or (job.key in once and not flag.exists()):
        flag.touch()

        def die(*args, **kwargs):  # once the run has started (its lock held, its start logged): mid-training
            os.kill(os.getpid(), signal.SIGKILL)

        run.fit = die
    return jobs.execute(job, cfg, wait)
