"""Seeded teachers on disk: one folder per seed, found again by the dump and by ``--online`` students.

Layout, one folder per seed::

    cache/<task>/teachers/seed<i>/
        model.safetensors (+ config.json, tokenizer files for BERT)   the weights
        teacher.json                                                   what it is and how good
        checkpoint.safetensors                                         only while training (resume; no pickle)

``teacher.json`` is written last and atomically, so a seed counts as done only
when it exists and the weights still hash to the ``sha256`` it records.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import MtdError
from ..core.hashing import sha256_file
from ..core.safe_files import read_text

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


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def load_teacher(folder: Path, check: bool = False) -> Teacher | None:
    """The finished teacher in ``folder``, or None; ``check`` re-hashes the weights."""
    rec = folder / RECORD
    if not rec.exists() or not (folder / WEIGHTS).exists():
        return None
    try:  # a FIFO planted as teacher.json is refused, not waited on
        info = json.loads(read_text(rec))
        seed = int(info["seed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MtdError(f"{rec} is not a teacher's record ({type(exc).__name__}: {' '.join(str(exc).split())[:80]}): "
                       "remove the folder to train the teacher again") from None
    if check and sha256_file(folder / WEIGHTS) != info.get("sha256"):
        log.warning("%s: weights do not match the recorded sha256; retraining", folder)
        return None
    return Teacher(seed, folder, info)


def find_teachers(teachers_dir: Path, task: str | None = None) -> list[Teacher]:
    """Every finished teacher under ``teachers_dir``, in seed order (the store's teacher axis)."""
    teachers_dir = Path(teachers_dir)
    if not teachers_dir.is_dir():
        raise MtdError(f"no teachers folder at {teachers_dir} (train them with `mtd-cache teachers`)")
    found = [t for p in sorted(teachers_dir.glob("seed*")) if (t := load_teacher(p)) is not None]
    for t in [t for t in found if t.info.get("rejected")]:
        log.warning("%s: skipped, rejected by the quality gate (%s); `mtd-cache teachers --force` accepts it",
                    t.path, t.info["rejected"])
    found = [t for t in found if not t.info.get("rejected")]
    if task is not None:
        other = [t for t in found if t.info.get("task") != task]
        if other:
            raise MtdError(f"{other[0].path} is a {other[0].info.get('task')} teacher, not {task}")
    if not found:
        raise MtdError(f"no finished teacher in {teachers_dir} (each needs {WEIGHTS} and {RECORD}: train them with "
                       f"mtd-cache teachers --out {teachers_dir}; --force accepts a rejected one)")
    return sorted(found, key=lambda t: t.seed)


def teacher_fields(teachers: list[Teacher]) -> dict[str, Any]:
    """The store attributes that say where the teachers came from (``StoreSpec`` fields)."""
    models = {t.info.get("model", "") for t in teachers}
    return {"teacher_model": ", ".join(sorted(models)), "teacher_seeds": tuple(t.seed for t in teachers),
            "teacher_paths": tuple(str(t.path.resolve()) for t in teachers),
            "teachers_sha256": tuple(t.sha256 for t in teachers)}
