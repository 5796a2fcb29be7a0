"""teachers/folders.py: a teacher folder is reused only for the same model and settings."""

from __future__ import annotations

import logging

import pytest

from mtd_cache.core.errors import MtdError
from mtd_cache.teachers import train_teachers


def test_a_teacher_folder_is_reused_only_for_the_same_model_and_settings(sst2_teachers, caplog):
    root, data, base, opts = sst2_teachers
    with caplog.at_level(logging.INFO):
        again = train_teachers("sst-2", [0, 1], root / "t", str(base), str(data), opts, device="cpu")
    assert [t.seed for t in again] == [0, 1] and "done already with these settings" in caplog.text
    with pytest.raises(MtdError, match=r"seed0 holds a teacher trained with lr=0.005 \(requested 0.0001\): give "
                                       r"another --out, or --force to train it again"):
        train_teachers("sst-2", [0], root / "t", str(base), str(data), {**opts, "lr": 1e-4}, device="cpu")
    with pytest.raises(MtdError, match=r"holds a teacher trained with model '.*base', not the requested 'other'"):
        train_teachers("sst-2", [0], root / "t", "other", str(data), opts, device="cpu")
