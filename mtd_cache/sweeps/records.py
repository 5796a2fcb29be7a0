"""Run records into a table: finished runs only, each with its experiment, its predictions' file and whether it died.

- **Finished runs only.** ``load_records`` keeps records whose ``status`` is
  ``"done"`` or ``"ok"``; other statuses (running, failed) are skipped with an
  info line, files that are not run records with a warning. A ``run_id`` seen
  twice (a copied file) is counted once. TinyBERT's stage-1 records are costs
  of the students that name them, not results: they are left out.
- **Experiments.** Every run belongs to one experiment (``record.experiment_of``):
  the hash of everything that defines a comparison except what a sweep varies,
  each setting canonical by its declared type (``temperature`` 4 and 4.0 are one
  experiment, also in records written before experiments were canonical).
  Records written before the key existed get it rebuilt from their configuration
  and store; those that cannot (no configuration recorded) are ``unassigned`` and
  reported apart, never pooled with an experiment.
- **One run, once.** Two records of the same run under two spellings of its
  settings (trained before runs were found by their canonical alias) are one run:
  the first (by path) is kept, with a warning.
- **Dead runs.** A student that predicts one class for the whole evaluation set,
  or scores no more than a point above always predicting the majority class, has
  diverged (a lost seed lottery, not a result to average): ``dead`` is flagged when
  its predictions were kept, ``<NA>`` otherwise. A language-model student is dead
  when its dev perplexity is no better than its training tokens' unigram distribution.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.errors import MtdError
from ..core.safe_files import open_regular, read_text
from ..students.record import STAGE1_RECORD, experiment_of, make_experiment_id, make_run_id
from ..tasks.chance import chance_reason, lower_is_better, unigram_reason

log = logging.getLogger(__name__)

REQUIRED = ("run_id", "task", "student", "teachers", "primary", "k", "seed", "metric_name", "metric",
            "wall_s", "energy_j", "status")
DONE_STATUSES = frozenset({"done", "ok"})
UNASSIGNED = "unassigned"


def load_records(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """Every finished run record under ``runs_dir`` (recursive ``*.json``), one row each.

    ``teachers`` becomes a sorted tuple; ``energy_j`` NaN when unknown; nested
    fields (``config``) are left out of the frame.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in sorted(Path(runs_dir).rglob("*.json")):
        rec = _read_record(path)
        if rec is None:
            continue
        if rec.get("kind") == "stage1":
            log.debug("%s is a TinyBERT stage-1 run: a cost of the students that name it, not a result", path)
        elif rec["status"] not in DONE_STATUSES:
            log.info("skipping %s: status %r", path, rec["status"])
        elif rec["run_id"] in seen or rec["_canonical"] in seen:
            log.warning("skipping %s: run %s already loaded (the same run, perhaps under another spelling of its "
                        "settings)", path, rec["run_id"])
        else:
            seen.update((rec["run_id"], rec["_canonical"]))
            rows.append(rec)
    log.info("loaded %d finished runs from %s", len(rows), runs_dir)
    identities = {}
    for row in rows:
        identities.setdefault(row["experiment"], row.pop("_identity"))
    unassigned = [row for row in rows if row["experiment"] == UNASSIGNED]
    if unassigned:
        log.warning("%d runs are unassigned to an experiment (%s): reported apart, never pooled",
                    len(unassigned), unassigned[0].pop("_why"))
    for row in rows:
        row.pop("_why", None)
        row.pop("_canonical", None)
    extra = sorted({key for row in rows for key in row} - set(REQUIRED))
    df = pd.DataFrame(rows, columns=[*REQUIRED, *extra])
    df = df.astype({"k": "int64", "seed": "int64", "primary": "Int64", "metric": "float64",
                    "wall_s": "float64", "energy_j": "float64"})
    df.attrs["experiments"] = identities  # experiment id -> what defines it
    return df


def _read_record(path: Path) -> dict[str, Any] | None:
    """The normalised record in ``path``, or None (with a warning) when it is not one."""
    try:
        rec = json.loads(read_text(path))
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: not readable JSON (%s)", path, exc)
        return None
    missing = [key for key in REQUIRED if key not in rec] if isinstance(rec, dict) else list(REQUIRED)
    if missing and path.name == STAGE1_RECORD:  # TinyBERT's stage 1: a step of its students, not a student
        log.debug("%s: a TinyBERT stage-1 record, not a student's", path)
        return None
    if missing:
        log.warning("skipping %s: not a run record (missing %s)", path, ", ".join(missing))
        return None
    try:
        return _normalise(rec, path)
    except (TypeError, ValueError) as exc:
        log.warning("skipping %s: malformed run record (%s)", path, exc)
        return None


def _normalise(rec: dict[str, Any], path: Path) -> dict[str, Any]:
    out = {key: v for key, v in rec.items() if not isinstance(v, (dict, list))}
    teachers = tuple(sorted(int(t) for t in rec["teachers"]))
    if len(teachers) != int(rec["k"]):
        raise ValueError(f"k = {rec['k']} but {len(teachers)} teachers")
    metric, wall_s = float(rec["metric"]), float(rec["wall_s"])
    if not math.isfinite(metric) or not (math.isfinite(wall_s) and wall_s >= 0):  # a NaN metric is no score
        raise ValueError(f"metric {metric}, wall_s {wall_s}: expected a finite score and a time >= 0")
    out.update(teachers=teachers, k=int(rec["k"]), seed=int(rec["seed"]), metric=metric,
               wall_s=wall_s, path=str(path),
               primary=None if rec["primary"] is None else int(rec["primary"]),
               energy_j=math.nan if rec["energy_j"] is None else float(rec["energy_j"]))
    exp, identity, why = experiment_of(rec)
    if identity is not None:
        identity = canonical_identity(identity)
        exp = make_experiment_id(identity)
    out.update(experiment=exp or UNASSIGNED, _identity=identity, _why=why, online=bool((identity or {}).get("online")),
               _canonical=canonical_run_id(rec))
    # the same experiment with the teachers run the other way (store <-> online): where measured online times
    # of a cached sweep's runs are found
    out["twin_experiment"] = make_experiment_id({**identity, "online": not identity.get("online")}) \
        if identity else None
    if "epochs" not in out and isinstance(rec.get("history"), list):  # records before "epochs" was written
        out["epochs"] = len(rec["history"])
    name = rec.get("predictions")  # a file beside the record, by name: never a path elsewhere
    out["predictions"] = str(path.parent / name) if isinstance(name, str) and name and Path(name).name == name \
        and name not in (".", "..") else None
    out["dead"] = dead_of(rec, out["predictions"])
    return out


def dead_of(rec: dict[str, Any], predictions: str | None) -> bool | None:
    """Whether a finished run died: a classifier at chance (``is_dead``), a language model no better than the
    unigram distribution of its training tokens (its record's ``unigram_perplexity``); None when unknown."""
    if lower_is_better(rec.get("metric_name", "")):
        bar, value = rec.get("unigram_perplexity"), rec.get("metric")
        return None if bar is None or value is None else unigram_reason(float(value), float(bar)) is not None
    return is_dead(load_predictions(predictions)) if predictions else None


def canonical_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """An experiment's identity with every setting in its declared type (the student's recipe's settings)."""
    settings = _settings_of(identity.get("student"))
    if settings is None or not isinstance(identity.get("recipe"), dict):
        return identity
    return {**identity, "recipe": settings.canonical(identity["recipe"])}


def canonical_run_id(rec: dict[str, Any]) -> str:
    """The run's id with every setting in its declared type: recorded by newer runs, rebuilt for older ones."""
    if isinstance(rec.get("canonical_id"), str):
        return rec["canonical_id"]
    cfg, settings = rec.get("config"), _settings_of(rec.get("student"))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("recipe"), dict) or settings is None or \
            not {"teachers", "seed"} <= set(cfg):  # not the identity its run id hashes: the run is its own
        return str(rec["run_id"])
    return make_run_id({**cfg, "recipe": settings.canonical(cfg["recipe"])}, str(rec.get("store_fingerprint")),
                       list(rec.get("teachers_sha256") or []))


def _settings_of(student: Any) -> Any:
    from ..students.recipes import get_recipe

    try:
        return get_recipe(str(student)).Settings
    except (MtdError, ImportError):
        return None


def load_predictions(path: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(predicted class ids, gold labels) of a run's evaluation set, or None (not kept, or gone)."""
    return _kept_arrays(path, {"pred": np.int64, "label": np.int64}, "predictions")


def load_sequence_scores(path: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(NLL summed per evaluation sequence, predicted tokens per sequence) of a language-model run, or None."""
    return _kept_arrays(path, {"nll": np.float64, "tokens": np.int64}, "sequence scores")


def _kept_arrays(path: Any, arrays: dict[str, Any], what: str) -> tuple[np.ndarray, ...] | None:
    """The named arrays of a run's ``.predictions.npz``, each as its dtype, or None (not kept, gone, unreadable:
    said in a warning)."""
    if not isinstance(path, str) or not path:  # None, or pandas' NaN for a run that kept none
        return None
    try:  # a regular file only (a FIFO would block the report), arrays only (no pickle)
        with open_regular(path) as f, np.load(f, allow_pickle=False) as z:
            return tuple(z[name].astype(dtype) for name, dtype in arrays.items())
    except (OSError, KeyError, ValueError, EOFError, AttributeError) as exc:
        log.warning("%s: %s not readable (%s): no intervals from this run", path, what, exc)
        return None


def is_dead(pred_label: tuple[np.ndarray, np.ndarray] | None) -> bool | None:
    """A diverged student: at chance by the teachers' rule (``tasks.chance``: one class for every example, or no
    better than the majority class + 1 point)."""
    if pred_label is None or len(pred_label[0]) == 0:
        return None
    return chance_reason(*pred_label) is not None
