#!/usr/bin/env python
"""`make demo` (foundation stage): SYNTHETIC teacher logits imported into a store, then inspected.

The logits below are random numbers labelled as such; no teacher was trained.
The vision pipeline replaces this with real teachers on the bundled digits set.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np

out = Path("cache/demo-synthetic")
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
labels = rng.integers(0, 3, size=200)
logits = rng.normal(size=(200, 6, 3)).astype(np.float32) + 2.0 * np.eye(3)[labels][:, None, :]
np.save(out / "synthetic_logits.npy", logits)
np.save(out / "labels.npy", labels)
store = out / "store.h5"
store.unlink(missing_ok=True)
bin_dir = Path(sys.executable).parent
subprocess.run([bin_dir / "mtd-cache", "import", "--task", "synthetic", "--teacher-model", "SYNTHETIC random logits",
                "--logits", out / "synthetic_logits.npy", "--labels", out / "labels.npy", "--out", store], check=True)
subprocess.run([bin_dir / "mtd-cache", "inspect", store], check=True)
