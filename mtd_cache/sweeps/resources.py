"""What the runs of a folder share, found from the stores they read: reference lines, costs, teacher rates.

Per store: the teacher ensemble's dev score (a reference line on its experiments' figures), the dump's
cost, the teacher set it was dumped from (keyed by the teachers' hashes, so R repeat stores of one set
share one training cost) with that set's training cost from the teachers' ``teacher.json``, and the
rate of one teacher inference: the sidecar's re-measurement (``mtd-cache inspect --measure-forward``)
when there is one for this store, else the dump's own.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.errors import MtdError
from .costs import Rate, Shared

log = logging.getLogger(__name__)


def from_stores(df: pd.DataFrame) -> tuple[dict[str, dict[str, float]], Shared]:
    """(per experiment, its reference lines; what the folder's runs share) from the stores the runs name."""
    lines: dict[str, dict[str, float]] = {}
    shared = Shared()
    paths = sorted(set(df["store"].dropna())) if "store" in df else []
    refs = {p: _store(Path(p), shared) for p in paths}
    for exp, runs in df.groupby("experiment"):
        lines[exp] = {}
        for p in sorted(set(runs["store"].dropna())) if "store" in runs else []:
            lines[exp].update(refs[p])
    unknown = [p for p in paths if (shared.rates.get(p) or Rate(None)).seconds is None]
    if unknown:
        log.warning("%s: no teacher inference rate (dumped before it was recorded, or gone): online-equivalent "
                    "costs unknown (mtd-cache inspect STORE --measure-forward measures it)", ", ".join(unknown))
    return lines, shared


def _store(path: Path, shared: Shared) -> dict[str, float]:
    """The store's reference lines; its costs and rate into ``shared``."""
    from ..store import read_forward_sidecar
    from ..store.tokens import open_store
    from ..tasks.agreement import agreement
    from ..tasks.registry import task_of_store

    key = str(path)
    if not path.exists():
        log.warning("store %s of some records is gone: no ensemble line or teacher costs from it", path)
        return {}
    with open_store(path, check_finite=False) as s:
        lines = {}
        try:
            shared.agreement[key] = agreement(s)
        except MtdError as exc:
            log.info("no agreement statistics of %s: %s", path, exc)
        if s.dev_logits is not None and len(s.dev_logits):
            try:
                lines[f"teacher ensemble ({s.num_teachers}, dev)"] = task_of_store(s).score(s.mean_dev_logits(),
                                                                                              s.dev_labels)
            except MtdError as exc:  # a store of logits only: no task to score with
                log.warning("no teacher-ensemble line from %s: %s", path, exc)
        shared.dumps[key] = {"wall_s": s.dump_wall_s, "energy_j": s.dump_energy_j}
        teachers = [_teacher_info(Path(p)) for p in s.teacher_paths]
        hashes = ",".join(s.teachers_sha256) or f"store {key}"
        rate = Rate(s.teacher_forward_s, s.teacher_forward_j, "the dump", int(s.num_examples))
        sidecar = read_forward_sidecar(path, s.fingerprint)
    if sidecar is not None:
        rate = Rate(sidecar["teacher_forward_s"], sidecar.get("teacher_forward_j"), sidecar["file"], rate.examples)
    shared.rates[key] = rate
    cost: dict[str, float | None] | None = None  # unknown (imported, or moved): not counted, and said so
    if teachers and all(t is not None for t in teachers):
        known = all(t.get("energy_j") is not None for t in teachers)
        cost = {"wall_s": math.fsum(t.get("wall_s") or 0.0 for t in teachers),
                "energy_j": math.fsum(t["energy_j"] for t in teachers) if known else None}
    shared.teacher_sets[key] = (hashes, cost)
    return lines


def _teacher_info(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "teacher.json").read_text())
    except (OSError, ValueError):
        return None
