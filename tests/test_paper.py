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
from mtd_cache.sweeps import work
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
    r = subprocess.run([sys.executable, str(ROOT / "bin" / "paper.py"), "--dry-run", "--tasks", "cifar10,mrpc",
                        "--tflops", "50"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("estimate: <=1.75 EFLOP in all, <=9h43m at 50 TFLOP/s (--tflops); <=: text counted "
                               "at 128 tokens per example\n")
    assert "[1/14] cifar10: train the teachers (seeds 0-5) [~97.1 PFLOP, ~32m22s]" in r.stdout
    assert "[13/14] mrpc: the tinybert sweep, store r for repeat r (3 stores): 597 jobs: 576 students, 3 CE-only, " \
           "18 stage-1 [<=817 PFLOP, <=4h32m]" in r.stdout
    assert "[14/14] the report over every run [no estimate]" in r.stdout
    assert "$ mtd-cache augment --task mrpc --seed 2 --out cache/mrpc/augmented-2.tsv" in r.stdout
    assert list(tmp_path.iterdir()) == []  # nothing built
    rte = subprocess.run([sys.executable, str(ROOT / "bin" / "paper.py"), "--dry-run", "--tasks", "rte", "--students",
                          "tinybert", "--threads", "2"], capture_output=True, text=True)
    assert rte.returncode == 0 and "rte: the tinybert sweep" in rte.stdout and "--threads 2" in rte.stdout
    for rate in ("0", "-5", "nan"):
        r = subprocess.run([sys.executable, str(ROOT / "bin" / "paper.py"), "--dry-run", "--tflops", rate],
                           capture_output=True, text=True)
        assert (r.returncode, r.stderr.strip()) == (2, f"paper: error: --tflops {float(rate)}: expected a rate "
                                                       "above 0 (TFLOP/s)")
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


def test_each_step_s_work_is_counted_from_the_models_the_tasks_and_the_recipes():
    assert work.forward_flops("resnet110") == 505_775_360  # torch's counter on the meta device: 2 x MACs
    assert work.forward_flops("resnet20") == 81_102_080
    assert work.forward_flops("bert-base") == 22_348_434_432  # 128 tokens
    steps = {s.what: s for s in paper_steps(("cifar10", "mrpc"))}
    r110, r20, bert = (work.forward_flops(m) for m in ("resnet110", "resnet20", "bert-base"))
    # six teachers, He et al.'s 200 epochs of 50,000 images (3 passes a step) and 10,000 scored each epoch
    assert steps["cifar10: train the teachers (seeds 0-5)"].flops == 6 * 200 * (3 * 50_000 + 10_000) * r110
    assert steps["cifar10: dump the teachers' logits on every view"].flops == 6 * (50_000 * 162 + 10_000) * r110
    sweep = next(s for w, s in steps.items() if w.startswith("cifar10: the resnet20 sweep"))
    assert sweep.flops == 192 * 200 * (3 * 50_000 + 10_000) * r20 and not sweep.bound  # students read the cache
    mrpc = steps["mrpc: TinyBERT store 1 (augmentation file 1, TinyBERT-4L's layer map)"]
    assert mrpc.flops == 6 * (3668 * 31 + 408) * bert and mrpc.bound  # at most N + 1 = 31 rows per example
    assert steps["mrpc: train the teachers (seeds 0-5)"].flops == 6 * 3 * (3 * 3668 + 408) * bert
    assert paper_steps(("cifar10",), model="tv:resnet18")[0].flops is None  # not counted, and said so
    with pytest.raises(MtdError, match=r"^--pool: index 9 out of range: --seeds 0-5 trains 6 teachers \(--pool 0-5 "
                                       r"takes them all\)$"):
        paper_steps(("cifar10",), pool="0-9")
    with pytest.raises(MtdError, match="^--epochs: must be at least 1, got 0$"):
        paper_steps(("cifar10",), epochs=0)
    assert work.step_line(None, 1.0) == "no estimate" and work.span(3 * 86400) == "3 days"
