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

from ..core.energy import EnergyMeter
from ..core.errors import EXIT_INCOMPLETE, MtdError
from ..core.fit import fit, remove_checkpoint, total_cost
from ..core.hashing import sha256_file
from ..core.runtime import provenance, utc_now
from ..core.safe_files import atomic_write_json, check_target, make_dirs
from ..tasks.chance import REJECTED
from ..tasks.registry import get_task
from .adapter import task_file_extra
from .folders import RECORD, WEIGHTS, Teacher, load_teacher, seed_dir
from .modalities import modality

log = logging.getLogger(__name__)


class TeachersRejected(MtdError):
    """Some seeds trained but failed the quality gate: their weights are kept, the run exits non-zero."""

    exit_code = EXIT_INCOMPLETE


def train_teachers(task: str, seeds: Sequence[int], out: Path, model: str | None, data_dir: str | None,
                   options: dict[str, Any], device: str | None = None, force: bool = False) -> list[Teacher]:
    """Train every seed not already done; returns the accepted ones in seed order.

    A seed folder is reused only when its teacher was trained with the requested model and settings
    (otherwise one line naming the difference; ``force`` retrains it). A teacher that predicts one class
    for every dev example is *rejected*: its weights and ``teacher.json`` (saying why) are kept, the other
    seeds go on, and ``TeachersRejected`` names the rejected seeds at the end; ``force`` accepts a rejected
    teacher without retraining it. A teacher near chance level is kept with a ``warning`` in its record.
    """
    spec = get_task(task)
    settings = modality(spec).teacher_settings(model, options)  # type and range of every setting, before any work
    wanted = {"model": _model_name(spec, model, settings), "config": settings.as_dict()}
    done, rejected = [], {}
    for seed in seeds:
        folder = seed_dir(out, seed)
        existing = load_teacher(folder, check=True)
        if existing is not None:
            differs = _difference(existing.info, wanted)
            if differs and not force:
                raise MtdError(f"{folder} holds a teacher trained with {differs}: give another --out, or "
                               "--force to train it again")
            if not differs:
                teacher = _reuse(existing, force)
                if teacher is None:
                    rejected[seed] = existing.info["rejected"]
                else:
                    done.append(teacher)
                continue
            log.warning("teacher seed %d: %s; retraining (--force)", seed, differs)
            (folder / RECORD).unlink()
        made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        make_dirs(folder, below=out)
        for p in folder.iterdir():  # the tool's own folder: a link in it was planted, and would be written through
            check_target(p, "folder" if p.is_dir() and not p.is_symlink() else "file")
        try:
            result = train_one(spec, seed, model, data_dir, folder, options, device)
        except BaseException:
            for p in made:  # nothing left behind by a teacher that never started
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
            raise
        reason = result.pop("chance_reason", None)
        constant = bool(reason) and reason.startswith(REJECTED)
        info = {"task": spec.name, "seed": seed, **result, "sha256": sha256_file(folder / WEIGHTS),
                "rejected": reason if constant and not force else None,
                "warning": reason if reason and not constant else None,
                "accepted": f"--force: {reason}" if constant and force else None,
                "finished_utc": utc_now(), **provenance(), **task_file_extra(spec)}
        atomic_write_json(folder / RECORD, info)
        if info["rejected"]:
            log.warning("teacher seed %d rejected: %s (weights kept in %s; --force accepts it)", seed, reason, folder)
            rejected[seed] = reason
            continue
        if info["warning"]:
            log.warning("teacher seed %d is near chance level: %s (kept; see its teacher.json)", seed, reason)
        done.append(Teacher(seed, folder, info))
    if rejected:
        first = next(iter(rejected))
        raise TeachersRejected(f"teacher seed{'s' if len(rejected) > 1 else ''} "
                               f"{', '.join(map(str, rejected))} rejected ({first}: {rejected[first]}); their "
                               f"weights are kept: --force accepts them without training again, or train other "
                               f"seeds ({len(done)} accepted)")
    return done


def _model_name(task: Any, model: str | None, settings: Any) -> str:
    """The model a teacher of ``task`` is trained from, as its record names it."""
    from ..models.bert import DEFAULT_TEACHER

    return str(getattr(settings, "model", None) or model or DEFAULT_TEACHER)


def _difference(info: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """What differs between a finished teacher's record and the request, named with both values; None if same."""
    if str(info.get("model")) != wanted["model"]:
        return f"model {info.get('model')!r}, not the requested {wanted['model']!r}"
    have = info.get("config") or {}
    keys = [k for k in wanted["config"] if k in have and have[k] != wanted["config"][k]]
    keys += [k for k in wanted["config"] if k not in have and wanted["config"][k] is not None]
    if keys:
        return ", ".join(f"{k}={have.get(k)!r} (requested {wanted['config'][k]!r})" for k in keys[:3])
    return None


def _reuse(existing: Teacher, force: bool) -> Teacher | None:
    """A finished teacher that matches the request: skipped; a rejected one accepted by ``force``, or None."""
    reason = existing.info.get("rejected")
    if not reason:
        log.info("teacher seed %d: done already with these settings (%s), skipped", existing.seed, existing.path)
        return existing
    if not force:
        log.warning("teacher seed %d: rejected earlier (%s); --force accepts it", existing.seed, reason)
        return None
    info = {**existing.info, "rejected": None, "accepted": f"--force: {reason}"}
    atomic_write_json(existing.path / RECORD, info)
    log.info("teacher seed %d: accepted without training again (--force; it %s)", existing.seed, reason)
    return Teacher(existing.seed, existing.path, info)


def train_one(task: Any, seed: int, model: str | None, data_dir: str | None, out: Path, options: dict[str, Any],
              device: str | None) -> dict[str, Any]:
    """Train one seeded teacher into ``out`` (resumable per epoch); the fields of its record."""
    job = modality(task).teacher_job(task, seed, model, data_dir, out, options, device)
    with EnergyMeter() as meter:
        history = fit(job.fit, job.device, meter)
    job.save()
    remove_checkpoint(job.fit)
    return {**job.result(history), **total_cost(job.fit, meter.reading)}  # every part of a resumed training
