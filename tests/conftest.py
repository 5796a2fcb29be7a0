import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (store_child) import by name
# verified-markers (mtd_cache/store/verified.py) of this session's stores in a folder of their own, not ~/.cache
os.environ.setdefault("MTD_VERIFIED_DIR", tempfile.mkdtemp(prefix="mtd-verified-"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """Tiny image and text stores (``tiny_stores.py``), built once per session; tests change copies only."""
    from tiny_stores import build

    return build(tmp_path_factory.mktemp("tiny"))
