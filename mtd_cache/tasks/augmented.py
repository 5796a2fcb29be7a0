"""Reading TinyBERT's augmented training files (written by ``mtd-cache augment``, ``augment.py``).

An augmented file is the task's training TSV with more rows, beside a ``.source.npy`` sidecar (each
row's original example) and a ``.settings.json`` sidecar (how it was made).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.errors import MtdError
from ..core.safe_files import open_regular, read_text
from .glue import GlueSplit, GlueTask, get_glue_task, read_split


def sidecars(out: Path) -> tuple[Path, Path, Path]:
    """(source index .npy, settings .json, shard folder) beside ``out``."""
    return out.with_suffix(".source.npy"), out.with_suffix(".settings.json"), out.with_name(out.name + ".partial")


def read_augmented(task: str | GlueTask, path: str | Path) -> tuple[GlueSplit, np.ndarray]:
    """An augmented file as a GlueSplit (the GLUE reader, the task's train layout) and each row's source."""
    task, path = get_glue_task(task), Path(path)
    source_path, settings_path, _ = sidecars(path)
    if settings_path.exists():
        other = json.loads(read_text(settings_path)).get("task")
        if other != task.name:
            raise MtdError(f"{path} is an augmentation of {other!r}, not {task.name!r}")
    renamed = replace(task, dir_name="", train=replace(task.train, file=path.name))
    split = read_split(renamed, "train", path.parent)
    if not source_path.exists():
        raise MtdError(f"{path}: its source index {source_path} is missing")
    with open_regular(source_path) as f:
        source = np.load(f, allow_pickle=False)
    if source.shape != (len(split),):
        raise MtdError(f"{source_path} has shape {source.shape}: expected ({len(split)},) for {path}")
    return split, source.astype(np.int64)
