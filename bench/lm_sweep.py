#!/usr/bin/env python
"""The language-model protocol end to end through the commands, on a real corpus: six tiny seeded teachers, their
token store (k = 32, with a dense check on a slice), and the paper's sweep of a pool of four with R = 2 and its
report in perplexity, the cached runs beside their online twins.

Corpus: Debian's ``fortunes`` (/usr/share/games/fortunes; every 20th fortune held out as the dev split), else
the SST-2 sentences of ../shared/data/glue. A byte-level BPE of 2,048 ids is trained on the training split
(``python -m mtd_cache.models.tiny_lm``); teachers are GPT-2-shaped random configs (2 layers x 128), students
smaller ones (1 layer x 64, about 0.2M parameters) over the same tokenizer.

Prints the figures the issues ask for: the teachers' perplexities against the unigram's, the token store's
bytes per position and teacher, |U| / k, the dense check and the dump's throughput; then the sweep's
equal-effort table and costs (report in OUT/report).

Usage: python bench/lm_sweep.py OUT [--sequences 4000] [--epochs 3] [--teachers-only]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def corpus(out: Path) -> tuple[Path, str]:
    root = Path("/usr/share/games/fortunes")
    files = sorted(p for p in root.glob("*") if p.is_file() and p.suffix == "" and not p.is_symlink()) \
        if root.is_dir() else []
    if files:
        docs = [d.strip() for p in files for d in p.read_text(errors="replace").split("\n%\n") if d.strip()]
        sep, source = "%", str(root)
    else:
        sst = SHARED / "SST-2" / "train.tsv"
        if not sst.exists():
            raise SystemExit("lm_sweep: no corpus here (Debian's fortunes, or ../shared/data/glue/SST-2)")
        docs = [line.split("\t")[0] for line in sst.read_text().splitlines()[1:]]
        sep, source = "%", str(sst)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("\n%\n".join(d for i, d in enumerate(docs) if i % 20) + "\n")
    (out / "dev.txt").write_text("\n%\n".join(d for i, d in enumerate(docs) if i % 20 == 0) + "\n")
    task = out / "fortunes.json"
    task.write_text(json.dumps({"name": "fortunes", "kind": "lm", "train": "train.txt", "dev": "dev.txt",
                                "separator": sep, "block_size": 64}))
    return task, f"{source}: {len(docs):,} documents"


def run(*args: object) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args[:3]))}... failed:\n{r.stderr[-3000:]}")
    return r.stdout, time.perf_counter() - t0


def student_config(teacher_cfg: Path, out: Path, width: int) -> Path:
    from transformers import GPT2Config

    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (teacher_cfg / name).exists():
            shutil.copy(teacher_cfg / name, out / name)
    cfg = GPT2Config.from_pretrained(teacher_cfg)
    GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=width, n_layer=1, n_head=2,
               bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id).save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sequences", type=int, default=4000, help="training sequences (blocks of 64 tokens)")
    ap.add_argument("--epochs", type=int, default=3, help="student epochs")
    ap.add_argument("--teachers-only", action="store_true", help="stop after the token stores")
    a = ap.parse_args()
    out = a.out.resolve()
    task, source = corpus(out / "data")
    print(f"corpus {source}")
    cfg = out / "teacher_cfg"
    if not (cfg / "config.json").exists():
        run(sys.executable, "-m", "mtd_cache.models.tiny_lm", out / "data" / "train.txt", cfg, "--vocab", 2048,
            "--layers", 2, "--width", 128, "--positions", 64)
    _, wall = run(BIN / "mtd-cache", "teachers", "--task", task, "--model", f"hf:{cfg}", "--seeds", "0-5",
                  "--epochs", 2, "--lr", "3e-3", "--batch-size", 16, "--train-subset", a.sequences,
                  "--out", out / "teachers")
    for seed in range(6):
        info = json.loads((out / "teachers" / f"seed{seed}" / "teacher.json").read_text())
        m = info["metrics"]
        print(f"  teacher seed {seed}: dev perplexity {m['perplexity']:.1f} (unigram {m['unigram_perplexity']:.1f}), "
              f"next-token accuracy {m['accuracy']:.3f}, {info['parameters']:,} parameters, {info['wall_s']:.0f} s")
    print(f"teachers: {wall:.0f} s (command, incl. skipped seeds)")
    dense, wall = run(BIN / "mtd-cache", "dump", "--task", task, "--teachers-dir", out / "teachers", "--k", 32,
                      "--set", "temperatures=1,2,4", "--dense-check", "--train-subset", 200,
                      "--out", out / "dense.h5")
    info, _ = run(BIN / "mtd-cache", "inspect", out / "dense.h5")
    print(f"dense-check dump (200 sequences, k = 32, T = 1, 2, 4): {wall:.0f} s\n{info}")
    _, wall = run(BIN / "mtd-cache", "dump", "--task", task, "--teachers-dir", out / "teachers", "--k", 32,
                  "--set", "temperatures=1,2", "--train-subset", a.sequences, "--out", out / "tokens.h5")
    info, _ = run(BIN / "mtd-cache", "inspect", out / "tokens.h5")
    print(f"sweep store ({a.sequences} sequences, k = 32, T = 1, 2): {wall:.0f} s\n{info}")
    if a.teachers_only:
        return 0
    student = student_config(cfg, out / "student_cfg", 64)
    _, wall = run(BIN / "mtd-sweep", "--store", out / "tokens.h5", "--student", f"lm:{student}", "--pool", "0-3",
                  "--repeats", 2, "--epochs", a.epochs, "--set", "lr=3e-3", "--set", "batch_size=16",
                  "--online-twins", out / "teachers", "--twin-repeats", 1, "--out", out / "runs")
    print(f"sweep: {wall:.0f} s")
    run(BIN / "mtd-report", out / "runs", "--out", out / "report")
    print((out / "report" / "summary.md").read_text().split("## ", 1)[1])
    print((out / "report" / "cost.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
