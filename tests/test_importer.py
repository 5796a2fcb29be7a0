"""teachers/importer.py: logits from elsewhere, refused when no student could train on them."""

from __future__ import annotations

import numpy as np
import pytest

from mtd_cache.core.errors import MtdError
from mtd_cache.teachers.importer import import_arrays
from mtd_cache.teachers.seeds import TeachersRejected


@pytest.mark.parametrize("logits, labels, message", [
    (np.zeros((4, 9, 2, 10), dtype=np.int64), np.zeros(4, int), "logits have dtype int64: expected raw "
                                                               "floating-point logits"),
    (np.zeros((0, 9, 2, 10), np.float32), np.zeros(0, int), r"logits have shape \(0, 9, 2, 10\): no examples"),
    (np.zeros((4, 2, 10), np.float32), np.zeros(4, int), r"digits is an image task: its logits need a view axis, "
                                                         r"\(N, V, T, C\) with --views"),
], ids=["integer", "empty", "no-views"])
def test_import_refuses_what_no_student_can_train_on(tmp_path, logits, labels, message):
    views = np.zeros((9, 3), np.int16) if logits.ndim == 4 else None
    with pytest.raises(MtdError, match=message):
        import_arrays(tmp_path / "s.h5", "digits", logits, labels, views=views)
    assert list(tmp_path.iterdir()) == []


def test_imported_teachers_pass_the_same_quality_gate(tmp_path, caplog):
    """On the dev logits, by the chance rule: one class for every dev example refuses the import (exit 4, nothing
    written) unless --force; near chance imports with a warning; without dev logits nothing is judged."""
    rng = np.random.default_rng(0)
    labels, dev_labels = rng.integers(0, 3, 30), np.array([0, 1, 2] * 10)
    logits = rng.normal(size=(30, 3, 3)).astype(np.float32)
    dev = np.eye(3, dtype=np.float32)[dev_labels][:, None].repeat(3, 1)  # (30, 3 teachers, 3): all right
    dev[:, 1] = np.eye(3)[2]  # teacher 1: class 2 ('c') for every example
    dev[:, 2] = np.eye(3)[(dev_labels + 1) % 3]  # teacher 2: never right, not constant: near chance
    with pytest.raises(TeachersRejected, match=r"^teacher 1 \(seed 11\): predicts a single class \('c'\) for all 30 "
                                               r"dev examples; nothing written: leave it out of the arrays, or "
                                               r"--force imports it$") as err:
        import_arrays(tmp_path / "s.h5", "mine", logits, labels, dev, dev_labels, label_names=["a", "b", "c"],
                      teacher_seeds=[10, 11, 12])
    assert err.value.exit_code == 4 and list(tmp_path.iterdir()) == []
    caplog.clear()
    with caplog.at_level("WARNING"):
        out = import_arrays(tmp_path / "s.h5", "mine", logits, labels, dev, dev_labels, label_names=["a", "b", "c"],
                            teacher_seeds=[10, 11, 12], force=True)
    assert out.exists() and [r.getMessage() for r in caplog.records] == [
        "teacher 1 (seed 11) is at chance: predicts a single class ('c') for all 30 dev examples (imported, --force)",
        "teacher 2 (seed 12) is near chance level: dev accuracy 0.0000 is not more than 0.01 above the "
        "majority-class baseline 0.3333 (imported)"]
    assert import_arrays(tmp_path / "t.h5", "mine", logits, labels).exists()  # no dev logits: nothing to judge
