"""teachers/importer.py: logits from elsewhere, refused when no student could train on them."""

from __future__ import annotations

import numpy as np
import pytest

from mtd_cache.core.errors import MtdError
from mtd_cache.teachers.importer import import_arrays


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
