"""models/hub.py: an unreachable Hub fails at once, in one line naming the setting that takes a local folder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import write_sst2

from mtd_cache.core.errors import MtdError
from mtd_cache.models import bert

BIN = Path(sys.executable).parent


def test_an_unreachable_hub_name_fails_at_once_naming_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    t0 = time.perf_counter()
    with pytest.raises(MtdError) as err:
        bert.load_classifier("bert-base-uncased", 2, hint="give a local folder: --model PATH")
    assert time.perf_counter() - t0 < 5
    assert str(err.value) == ("the model 'bert-base-uncased': not a local folder, not in the Hugging Face cache, "
                              "and the Hub cannot be reached (HF_HUB_OFFLINE is set): give a local folder: "
                              "--model PATH")


@pytest.mark.slow
def test_teachers_offline_is_one_line_and_leaves_no_folder(tmp_path):
    data = write_sst2(tmp_path / "glue", 16, 8)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": str(BIN)}
    r = subprocess.run([str(BIN / "mtd-cache"), "teachers", "--task", "sst-2", "--seeds", "2", "--data-dir",
                        str(data), "--out", str(tmp_path / "t")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the tokenizer 'bert-base-uncased': not a local folder" in r.stderr
    assert "--model PATH (make teachers MODEL=PATH" in r.stderr
    assert not (tmp_path / "t").exists()  # nor the folder made for it
