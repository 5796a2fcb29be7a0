"""Teachers over the data into the store: finds the teachers, hands them to the task's modality."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from .errors import MtdError
from .store import TeacherStore, partial_dir
from .teachers import find_teachers, modality

log = logging.getLogger(__name__)


def run_dump(task: str, teachers_dir: Path, out: Path, primaries: Sequence[int], options: dict[str, Any],
             device: str | None = None) -> Path:
    """Write ``out`` from every finished teacher in ``teachers_dir`` (seed order = teacher axis)."""
    if out.exists():
        log.info("%s is complete already; remove it to dump again", out)
        TeacherStore.open(out).close()  # still refuse a damaged file loudly
        return out
    teachers = find_teachers(teachers_dir, task)
    bad = [p for p in primaries if not 0 <= p < len(teachers)]
    if bad:
        raise MtdError(f"--primary {bad[0]} is out of range: {teachers_dir} has {len(teachers)} teachers "
                       f"(0-{len(teachers) - 1})")
    if partial_dir(out).exists():
        log.info("resuming the unfinished dump in %s", partial_dir(out))
    return modality(task).dump(task=task, teachers=teachers, out=out, primaries=list(primaries),
                               options=options, device=device)


def teacher_fields(teachers) -> dict[str, Any]:
    """The store attributes that say where the teachers came from."""
    models = {t.info.get("model", "") for t in teachers}
    return {"teacher_model": ", ".join(sorted(models)), "teacher_seeds": tuple(t.seed for t in teachers),
            "teacher_paths": tuple(str(t.path.resolve()) for t in teachers),
            "teachers_sha256": tuple(t.sha256 for t in teachers)}
