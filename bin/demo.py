#!/usr/bin/env python
"""`make demo`: the whole pipeline offline on scikit-learn's bundled 8x8 digits.

Six seeded ResNet-20 teachers -> one 9-view logit store -> ResNet-8 students
distilled from k = 1 and k = 6 teachers, and the CE-only baseline; ends with a
table. Everything goes through the command-line tools, as a user would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path("cache") / "demo-digits"
TEACHER_EPOCHS, STUDENT_EPOCHS = "15", "15"


def run(*args: str | Path) -> str:
    print("$", " ".join(map(str, args)), flush=True)
    return subprocess.run([str(BIN / str(args[0])), *map(str, args[1:])], check=True, stdout=subprocess.PIPE,
                          text=True).stdout


def main() -> None:
    t0 = time.perf_counter()
    run("mtd-cache", "teachers", "--task", "digits", "--model", "resnet20", "--seeds", "0-5",
        "--epochs", TEACHER_EPOCHS, "--out", ROOT / "teachers")
    store = ROOT / "store.h5"
    run("mtd-cache", "dump", "--task", "digits", "--teachers-dir", ROOT / "teachers", "--out", store)
    print(run("mtd-cache", "inspect", store))
    rows = []
    for teachers in ["none", "0", "1", "2", "3", "4", "5", "0-5"]:
        out = run("mtd-train", "--store", store, "--student", "resnet8", "--teachers", teachers,
                  "--epochs", STUDENT_EPOCHS, "--out", ROOT / "runs")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    info = json.loads(run("mtd-cache", "inspect", store, "--json"))
    print(f"\nResNet-8 students on digits (test accuracy), {STUDENT_EPOCHS} epochs each")
    print(f"{'teachers':>10} {'k':>2} {'accuracy':>9} {'wall s':>7}")
    for r in rows:
        print(f"{','.join(map(str, r['teachers'])) or 'CE only':>10} {len(r['teachers']):>2} "
              f"{r['metric']:>9.4f} {r['wall_s']:>7.1f}")
    accs = [t["dev_metric"] for t in info["teachers"]]
    print(f"teachers (ResNet-20): min {min(accs):.4f}, max {max(accs):.4f}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
