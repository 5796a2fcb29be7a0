"""tasks/chance.py: the chance rule, and the gate it puts on every kind of teacher (image teachers here; text
teachers in test_teachers_text.py) and on students (``dead`` in the report and the sweep's lines)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cli_runner import run_cli

from mtd_cache.core.errors import MtdError
from mtd_cache.sweeps.records import is_dead
from mtd_cache.tasks.chance import chance_reason, majority_baseline

LABELS = np.array([0] * 6 + [1] * 2 + [2] * 2)  # majority class: 60%


@pytest.mark.parametrize("pred, reason", [
    ([2] * 10, "predicts a single class ('c') for all 10 test examples"),
    ([0] * 5 + [1] + [0] * 4, "test accuracy 0.5000 is not more than 0.01 above the majority-class baseline 0.6000"),
    ([0] * 6 + [1] * 2 + [0] * 2, None),  # 0.8: learnt something
    ([1] * 6 + [0] * 4, "test accuracy 0.0000 is not more than 0.01 above the majority-class baseline 0.6000"),
])
def test_the_rule(pred, reason):
    assert chance_reason(np.array(pred), LABELS, ["a", "b", "c"], "test") == reason
    assert is_dead((np.array(pred), LABELS)) is (reason is not None)  # a student is dead by the same rule


def test_nothing_to_judge_is_not_chance():
    assert chance_reason(np.array([], dtype=int), np.array([], dtype=int)) is None
    assert chance_reason(np.array([0, 1]), np.array([0, 1, 1])) is None  # not the same examples
    assert is_dead(None) is None and majority_baseline(np.array([0, 1, 1, 1])) == 0.75
    with pytest.raises(MtdError, match="majority baseline of an empty label set"):
        majority_baseline(np.array([], dtype=np.int64))


def test_an_image_teacher_at_chance_is_rejected_kept_and_accepted_by_force(tmp_path):
    """A diverged teacher (lr 100: one class for every test digit) fails the gate as a text teacher does: exit 4,
    its weights and record kept, nothing dumped from it; --force accepts it without training it again."""
    out = tmp_path / "teachers"
    args = ["teachers", "--task", "digits", "--model", "resnet8", "--seeds", "0", "--set", "epochs=2",
            "--set", "lr=100", "--out", out]
    r = run_cli("mtd-cache", *args)
    assert r.returncode == 4, r.stderr
    assert "teacher seed 0 rejected: predicts a single class ('9') for all 360 test examples (weights kept in " \
           f"{out / 'seed0'}; --force accepts it)" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "mtd-cache: error: teacher seed 0 rejected (0: predicts a single class ('9') for all 360 test examples); "
        "their weights are kept: --force accepts them")
    info = json.loads((out / "seed0" / "teacher.json").read_text())
    assert info["rejected"] == "predicts a single class ('9') for all 360 test examples"
    assert info["metric"] == pytest.approx(0.1)
    epochs = pd.read_csv(out / "seed0" / "metrics.csv")  # test accuracy every epoch, as He et al.'s trainer
    assert epochs["epoch"].tolist() == [1, 2] and epochs["metric"].tolist() == pytest.approx([0.1, 0.1])
    d = run_cli("mtd-cache", "dump", "--task", "digits", "--teachers-dir", out, "--out", tmp_path / "s.h5")
    assert d.returncode == 2 and "no finished teacher" in d.stderr and not (tmp_path / "s.h5").exists()
    weights = (out / "seed0" / "model.safetensors").stat().st_mtime_ns
    f = run_cli("mtd-cache", *args, "--force")
    assert f.returncode == 0, f.stderr
    info = json.loads((out / "seed0" / "teacher.json").read_text())
    assert info["rejected"] is None and info["accepted"] == "--force: predicts a single class ('9') for all 360 " \
                                                           "test examples"
    assert (out / "seed0" / "model.safetensors").stat().st_mtime_ns == weights  # not trained again
