"""The teacher stage: train every seed once (skipping seeds done already), record it, keep it.

The seed loop and the skeleton of one teacher's training (energy meter, ``fit``, save, checkpoint
removal, ``teacher.json``) are here; what a teacher is and how it trains comes from the modality
adapter (``text.teacher_job``, ``vision.teacher_job``). Layout on disk: ``folders.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..energy import EnergyMeter
from ..errors import MtdError
from ..record import provenance, utc_now
from ..tasks.registry import get_task
from ..train import fit, remove_checkpoint, total_cost
from ..utils import atomic_write_json, sha256_file
from .adapter import task_file_extra
from .folders import RECORD, WEIGHTS, Teacher, load_teacher, seed_dir
from .modalities import modality

log = logging.getLogger(__name__)


def train_teachers(task: str, seeds: Sequence[int], out: Path, model: str | None, data_dir: str | None,
                   options: dict[str, Any], device: str | None = None, force: bool = False) -> list[Teacher]:
    """Train every seed not already done; returns all of them in seed order."""
    spec = get_task(task)
    modality(spec).teacher_settings(model, options)  # type and range of every setting, before any folder is made
    done = []
    for seed in seeds:
        folder = seed_dir(out, seed)
        existing = load_teacher(folder, check=True)
        if existing is not None:
            log.info("teacher seed %d: done already (%s), skipped", seed, folder)
            done.append(existing)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        result = train_one(spec, seed, model, data_dir, folder, options, device)
        reason = result.pop("chance_reason", None)
        if reason and not force:
            raise MtdError(f"teacher seed {seed} is at chance level ({reason}); refusing to keep it "
                           "(--force keeps it anyway)")
        info = {"task": spec.name, "seed": seed, **result, "sha256": sha256_file(folder / WEIGHTS),
                "finished_utc": utc_now(), **provenance(), **task_file_extra(spec)}
        atomic_write_json(folder / RECORD, info)
        done.append(Teacher(seed, folder, info))
    return done


def train_one(task: Any, seed: int, model: str | None, data_dir: str | None, out: Path, options: dict[str, Any],
              device: str | None) -> dict[str, Any]:
    """Train one seeded teacher into ``out`` (resumable per epoch); the fields of its record."""
    job = modality(task).teacher_job(task, seed, model, data_dir, out, options, device)
    with EnergyMeter() as meter:
        history = fit(job.fit, job.device, meter)
    job.save()
    remove_checkpoint(job.fit)
    return {**job.result(history), **total_cost(job.fit, meter.reading)}  # every part of a resumed training
