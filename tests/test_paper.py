"""`make paper`: the paper's protocol as steps, its run counts, and the repeat-store checks of a sweep."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtd_cache.core.errors import MtdError
from mtd_cache.sweeps.execute import SweepConfig, check_config
from mtd_cache.sweeps.paper import paper_steps
from mtd_cache.teachers.importer import import_arrays

ROOT = Path(__file__).resolve().parents[1]


def test_the_papers_protocol_step_by_step_with_its_run_counts():
    steps = paper_steps()
    plans = {s.what.split(":")[0] + " " + s.argv[s.argv.index("--student") + 1]: s.plan
             for s in steps if s.argv[0] == "mtd-sweep"}
    assert plans["cifar10 resnet20"] == "192 jobs: 189 students, 3 CE-only, 0 stage-1"
    for task in ("mrpc", "cola", "sst-2"):
        assert plans[f"{task} distilbert"] == "579 jobs: 576 students, 3 CE-only, 0 stage-1"
        assert plans[f"{task} tinybert"] == "597 jobs: 576 students, 3 CE-only, 18 stage-1"
        augment = [s.argv for s in steps if s.argv[:2] == ["mtd-cache", "augment"] and task in s.argv]
        assert [a[a.index("--seed") + 1] for a in augment] == ["0", "1", "2"]
        stores = [s.outputs[0] for s in steps if s.argv[:2] == ["mtd-cache", "dump"] and "--augmented" in s.argv
                  and s.argv[s.argv.index("--task") + 1] == task]
        assert stores == [f"cache/{task}/tinybert-{r}.h5" for r in range(3)]
        sweep = next(s.argv for s in steps if s.argv[0] == "mtd-sweep" and "tinybert" in s.argv and task in s.what)
        assert [sweep[i + 1] for i, a in enumerate(sweep) if a == "--store"] == stores  # store r for repeat r
    assert steps[-1].argv[0] == "mtd-report"
    two = paper_steps(("mrpc",), ("tinybert",), repeats=2)
    assert [s.argv[0] for s in two] == ["mtd-cache"] * 5 + ["mtd-sweep", "mtd-report"]
    assert two[5].plan == "398 jobs: 384 students, 2 CE-only, 12 stage-1"


@pytest.mark.slow
def test_make_paper_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bin" / "paper.py"), "--dry-run", "--tasks", "cifar10,mrpc"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[13/14] mrpc: the tinybert sweep, store r for repeat r (3 stores): 597 jobs" in r.stdout
    assert "$ mtd-cache augment --task mrpc --seed 2 --out cache/mrpc/augmented-2.tsv" in r.stdout
    assert list(tmp_path.iterdir()) == []  # nothing built
    rte = subprocess.run([sys.executable, str(ROOT / "bin" / "paper.py"), "--dry-run", "--tasks", "rte", "--students",
                          "tinybert", "--threads", "2"], capture_output=True, text=True)
    assert rte.returncode == 0 and "rte: the tinybert sweep" in rte.stdout and "--threads 2" in rte.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "bin" / "paper.py"), "--dry-run", "--tasks", "imagenet"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task 'imagenet' for the paper's protocol; the paper's: cifar10, mrpc, " \
        "cola, sst-2, or another GLUE task" in bad.stderr


def test_repeat_stores_must_differ_and_one_store_for_tinybert_repeats_is_named(tmp_path, caplog):
    rng = np.random.default_rng(0)
    views = np.array([(dy, dx, 0) for dy in range(3) for dx in range(3)], dtype=np.int16)
    a = import_arrays(tmp_path / "a.h5", "blobs", rng.normal(size=(20, 9, 6, 10)).astype(np.float32),
                      np.arange(20) % 10, views=views)
    shutil.copy(a, tmp_path / "b.h5")
    cfg = SweepConfig(stores=(str(a), str(tmp_path / "b.h5")), student="resnet8", pool=(0, 1), repeats=2)
    with pytest.raises(MtdError, match=r"--store .*b.h5 and --store .*a.h5 hold the same data \(fingerprint "):
        check_config(cfg)
    with caplog.at_level(logging.WARNING):
        check_config(SweepConfig(stores=(str(a),), student="tinybert", pool=(0, 1), repeats=3))
    assert "tinybert: 3 repeats on one store differ by seed only; the paper's TinyBERT repeats each use their " \
           "own augmentation file" in caplog.text
