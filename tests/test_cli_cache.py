"""``mtd-cache import`` and ``inspect`` driven as a user would (subprocess: real exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtd_cache.store import TeacherStore, partial_dir

EXE = Path(sys.executable).parent / "mtd-cache"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def arrays(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out = {"logits": rng.normal(size=(20, 3, 10)).astype(np.float32), "labels": np.arange(20) % 10,
           "dev_logits": rng.normal(size=(8, 3, 10)).astype(np.float32), "dev_labels": np.arange(8) % 10}
    out["dev_logits"][np.arange(8), :2, out["dev_labels"]] += 100.0  # teachers 0 and 1 always right
    paths = {}
    for name, value in out.items():
        np.save(tmp_path / f"{name}.npy", value)
        paths[name] = tmp_path / f"{name}.npy"
    return paths


def _import(arrays, out, *extra):
    # a task of the user's own (image tasks need a view axis: tests/test_store_hardening.py)
    return cli("import", "--task", "reviews", "--logits", arrays["logits"], "--labels", arrays["labels"],
               "--dev-logits", arrays["dev_logits"], "--dev-labels", arrays["dev_labels"],
               "--teacher-seeds", "4,5,6", "--teacher-model", "numpy", "--out", out, *extra)


@pytest.mark.slow
def test_import_then_inspect(tmp_path, arrays):
    out = tmp_path / "s.h5"
    r = _import(arrays, out)
    assert r.returncode == 0, r.stderr
    with TeacherStore.open(out) as s:
        np.testing.assert_array_equal(s.logits, np.load(arrays["logits"]))
        np.testing.assert_allclose(s.dev_metric[:2], [1.0, 1.0])
        assert s.metric == "accuracy" and s.label_names == [str(i) for i in range(10)]
    r = cli("inspect", out)
    assert r.returncode == 0, r.stderr
    for text in ("task         reviews (metric accuracy", "N=20, C=10, dev M=8", "[1] seed 5  dev accuracy 1.0000",
                 "3 x numpy", "primaries    none", f"fingerprint  {s.fingerprint}"):
        assert text in r.stdout
    info = json.loads(cli("inspect", out, "--json").stdout)
    assert info["num_examples"] == 20 and [t["seed"] for t in info["teachers"]] == [4, 5, 6]
    assert info["teachers"][0]["dev_metric"] == 1.0 and info["size_bytes"] == out.stat().st_size


@pytest.mark.parametrize("change, message", [
    ({"labels": np.arange(19)}, "labels have shape (19,): expected (20,) to match the logits"),
    ({"logits": np.zeros((20, 10))}, "logits have shape (20, 10): expected (N, T, C) or (N, V, T, C)"),
    ({"labels": np.arange(20) + 5}, "label 24 is outside 0..9"),
    ({"dev_logits": np.zeros((8, 2, 10))}, "dev logits have shape (8, 2, 10): expected (8, 3, 10)"),
    ({"logits": np.full((20, 3, 10), np.nan)}, "logits: teacher 0 has a non-finite value (nan) at example 0"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, arrays, change, message):
    for name, value in change.items():
        np.save(arrays[name], value)
    out = tmp_path / "s.h5"
    r = _import(arrays, out)
    assert r.returncode == 2
    assert r.stderr.strip() == f"mtd-cache: error: {message}"
    assert not out.exists() and not partial_dir(out).exists()


@pytest.mark.slow
def test_cli_usage_errors_are_one_line(tmp_path, arrays):
    r = cli("import", "--task", "reviews", "--logits", tmp_path / "nope.npy", "--labels", arrays["labels"],
            "--out", tmp_path / "s.h5")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "'--logits'" in r.stderr and "nope.npy" in r.stderr and "no such file" in r.stderr
    r = _import(arrays, tmp_path / "s.h5", "--teacher-seeds", "1,x")
    assert r.returncode == 2 and "'1,x': expected comma-separated integers" in r.stderr
    r = cli("inspect", tmp_path / "missing.h5")
    missing = f"no store at {tmp_path / 'missing.h5'} (write one with mtd-cache dump, or mtd-cache import)"
    assert (r.returncode, r.stderr.strip()) == (2, f"mtd-cache: error: {missing}")
    r = cli("inspect")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Missing argument 'STORE'" in r.stderr


@pytest.mark.slow
def test_existing_output_is_not_overwritten(tmp_path, arrays):
    out = tmp_path / "s.h5"
    assert _import(arrays, out).returncode == 0
    r = _import(arrays, out)
    assert r.returncode == 2 and "exists already" in r.stderr
