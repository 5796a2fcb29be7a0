"""Seeded teachers: train each once, record it, find it again.

Layout, one folder per seed::

    cache/<task>/teachers/seed<i>/
        model.safetensors (+ config.json, tokenizer files for BERT)   the weights
        teacher.json                                                   what it is and how good
        checkpoint.pt                                                  only while training (resume)

``teacher.json`` is written last and atomically, so a seed counts as done only
when it exists and the weights still hash to the ``sha256`` it records.
The modality modules (``vision``, ``text``) train one teacher each; this module
owns the loop over seeds, the record and the discovery used by dump and train.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import MtdError
from .record import provenance, utc_now
from .tasks.registry import is_image_task
from .utils import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
RECORD = "teacher.json"


@dataclass(frozen=True)
class Teacher:
    """A finished teacher found on disk."""

    seed: int
    path: Path
    info: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def sha256(self) -> str:
        return self.info["sha256"]


def modality(task: str):
    """The module that knows how to train, run and dump teachers of ``task``."""
    if is_image_task(task):
        from . import vision

        return vision
    from . import text

    return text


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def train_teachers(task: str, seeds: Sequence[int], out: Path, model: str | None, data_dir: str | None,
                   options: dict[str, Any], device: str | None = None, force: bool = False) -> list[Teacher]:
    """Train every seed not already done; returns all of them in seed order."""
    impl = modality(task)
    done = []
    for seed in seeds:
        folder = seed_dir(out, seed)
        existing = load_teacher(folder, check=True)
        if existing is not None:
            log.info("teacher seed %d: done already (%s), skipped", seed, folder)
            done.append(existing)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        result = impl.train_teacher(task=task, seed=seed, model=model, data_dir=data_dir, out=folder,
                                    options=options, device=device)
        reason = result.pop("chance_reason", None)
        if reason and not force:
            raise MtdError(f"teacher seed {seed} is at chance level ({reason}); refusing to keep it "
                           "(--force keeps it anyway)")
        info = {"task": task, "seed": seed, **result, "sha256": sha256_file(folder / WEIGHTS),
                "finished_utc": utc_now(), **provenance()}
        atomic_write_json(folder / RECORD, info)
        done.append(Teacher(seed, folder, info))
    return done


def load_teacher(folder: Path, check: bool = False) -> Teacher | None:
    """The finished teacher in ``folder``, or None; ``check`` re-hashes the weights."""
    rec = folder / RECORD
    if not rec.exists() or not (folder / WEIGHTS).exists():
        return None
    info = json.loads(rec.read_text())
    if check and sha256_file(folder / WEIGHTS) != info.get("sha256"):
        log.warning("%s: weights do not match the recorded sha256; retraining", folder)
        return None
    return Teacher(int(info["seed"]), folder, info)


def find_teachers(teachers_dir: Path, task: str | None = None) -> list[Teacher]:
    """Every finished teacher under ``teachers_dir``, in seed order (the store's teacher axis)."""
    teachers_dir = Path(teachers_dir)
    if not teachers_dir.is_dir():
        raise MtdError(f"no teachers folder at {teachers_dir} (train them with `mtd-cache teachers`)")
    found = [t for p in sorted(teachers_dir.glob("seed*")) if (t := load_teacher(p)) is not None]
    if task is not None:
        other = [t for t in found if t.info.get("task") != task]
        if other:
            raise MtdError(f"{other[0].path} is a {other[0].info.get('task')} teacher, not {task}")
    if not found:
        raise MtdError(f"no finished teacher in {teachers_dir} (each needs {WEIGHTS} and {RECORD})")
    return sorted(found, key=lambda t: t.seed)
