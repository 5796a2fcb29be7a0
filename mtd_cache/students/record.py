"""The run record: one JSON file per student run, named by a hash of what determines the run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.hashing import canonical_json, sha256_text
from ..core.safe_files import atomic_write_json, read_text

# Fields of the run record, in order.
STAGE1_RECORD = "stage1.json"  # a TinyBERT stage-1 run's record, in its own folder under <work_dir>/stage1/
RECORD_FIELDS = ("run_id", "kind", "experiment", "task", "student", "teachers", "primary", "k", "seed", "metric_name",
                 "metric", "predictions", "wall_s", "energy_j", "device", "store_fingerprint", "teachers_sha256",
                 "config", "started_utc", "finished_utc", "status")


def make_run_id(config: dict[str, Any], store_fingerprint: str, teachers_sha256: Sequence[str]) -> str:
    """sha256 of the canonical JSON of the resolved configuration, the store and the teachers.

    ``config`` must hold only what determines the result (not output folders,
    devices or verbosity): the same configuration always gets the same id, and
    retrained teachers (new hashes) get new ids, never silently reused results.
    """
    return sha256_text(canonical_json({"config": config, "store_fingerprint": store_fingerprint,
                                       "teachers_sha256": list(teachers_sha256)}))


def experiment_identity(task: str, student: str, recipe: dict[str, Any], store_fingerprints: Sequence[str],
                        teachers_sha256: Sequence[str], online: bool) -> dict[str, Any]:
    """What defines a comparison: everything a run depends on except what a sweep varies (teachers, primary, seed,
    which repeat store). ``store_fingerprints`` are all the stores of the sweep (R repeat stores), sorted."""
    return {"task": task, "student": student, "recipe": recipe, "stores": sorted(store_fingerprints),
            "teachers_sha256": list(teachers_sha256), "online": bool(online)}


def make_experiment_id(identity: dict[str, Any]) -> str:
    return sha256_text(canonical_json(identity))


def experiment_of(record: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, str]:
    """(experiment id, its identity, how it was found) of a run record; recomputed for records written before
    the key existed (from their configuration and store); (None, None, why) when it cannot be."""
    if record.get("experiment") and record.get("experiment_identity"):
        return record["experiment"], record["experiment_identity"], "recorded"
    cfg = record.get("config")
    if not isinstance(cfg, dict) or "recipe" not in cfg or not record.get("store_fingerprint"):
        return None, None, "the record holds no configuration or store fingerprint to rebuild it from"
    ident = experiment_identity(record["task"], record["student"], cfg["recipe"], [record["store_fingerprint"]],
                                record.get("teachers_sha256") or [], bool(cfg.get("online")))
    return make_experiment_id(ident), ident, "recomputed"


def record_path(out_dir: str | Path, task: str, student: str, run_id: str) -> Path:
    return Path(out_dir) / task / student / f"{run_id}.json"


def load_done(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` if it is a finished run, else None (a torn or failed one is redone)."""
    try:
        rec = json.loads(read_text(path))  # a FIFO planted as a record: unreadable, not waited on
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status") == "done" else None


def write_record(path: Path, record: dict[str, Any]) -> Path:
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise ValueError(f"run record lacks {missing}")
    atomic_write_json(path, record)
    return path


