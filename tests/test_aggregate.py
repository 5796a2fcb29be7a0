"""sweeps/aggregate.py: the per-k summaries, dead runs flagged and counted."""

from __future__ import annotations

import numpy as np
import pytest
from factories import RUN_EXAMPLES as M
from factories import pool_of_two, right, write_run

from mtd_cache.sweeps.records import load_records
from mtd_cache.sweeps.report import summarize


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
