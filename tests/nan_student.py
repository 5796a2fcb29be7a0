"""A sweep job function under which the teachers' targets of one student of a pack turn NaN from a given step on, as
a diverging student's would: imported by the sweep's spawned workers (tests/test_pack.py puts it in place of
``sweeps.execute.execute``). ``MTD_TEST_NAN_SUBSET``: the teacher subset ("0-1"), ``MTD_TEST_NAN_FROM``: the gather
call from which its row is NaN."""

from __future__ import annotations

import os

import numpy as np

from mtd_cache.store.reader import TeacherStore
from mtd_cache.sweeps import execute as jobs


def poison(subset: tuple[int, ...], start: int) -> None:
    real = TeacherStore.mean_logits_many
    calls = [0]

    def gather(self, subsets, index, view=None, weights=None):
        out = real(self, subsets, index, view, weights)
        calls[0] += 1
        if calls[0] > start:
            for s, chosen in enumerate(subsets):
                if tuple(sorted(chosen)) == subset:
                    out[s] = np.nan
        return out

    TeacherStore.mean_logits_many = gather


def execute(job, cfg, wait=False):
    subset = tuple(int(t) for t in os.environ["MTD_TEST_NAN_SUBSET"].split("-"))
    poison(subset, int(os.environ.get("MTD_TEST_NAN_FROM", "2")))
    return jobs.execute(job, cfg, wait)
