"""Task files: a researcher's own data as a text or image classification task, without code (docs/guide.md,
"Your own data").

    {"name": "reviews", "kind": "text", "train": "train.csv", "dev": "dev.csv", "text_column": "review",
     "text_pair_column": null, "label_column": "stars", "labels": ["1", "2", "3", "4", "5"], "metric": "accuracy"}
    {"name": "leaves", "kind": "image", "train": "train/", "dev": "val/", "image_size": 64,
     "views": {"pad": 4, "flip": true}}

JSON, or TOML (``.toml``). Paths are relative to the task file. A text task reads ``.csv`` (quoted
fields), ``.tsv`` (tab-separated, unquoted, as GLUE's files) or ``.jsonl`` (one object per line) by
extension, or a Hugging Face dataset (``"hf_dataset"``, ``"hf_config"``, ``"hf_splits"``) with the
``datasets`` extra; its labels, unless given, are the sorted distinct training labels (numerically
when they are all numbers). An image task reads torchvision's ImageFolder layout (a folder per class,
the classes sorted by name), resizes every image to ``image_size`` x ``image_size`` (bilinear), and
normalises with the mean and std of its training pixels; its cached views are the pad-crop-flip set
(``views``, default pad ``min(4, image_size // 8)`` and flip: CIFAR's 162 views at most).

A task is resolved once (labels, channels, normalisation) and recorded in every store made from it
(``record()``): students rebuild it from the store alone (``from_record``), and the fingerprint hashes
the file's content. A bad file is one line naming the file and the key or value, exit status 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tomllib

from ..core.errors import MtdError
from ..core.safe_files import not_utf8
from .glue import GLUE_TASKS, GlueSplit
from .image_folders import ImageFolderTask, _given_labels, _need
from .images import IMAGE_TASKS
from .lm import LM_KEYS, LmTask
from .rows import hf_split, read_rows

TEXT_KEYS = {"name", "kind", "description", "train", "dev", "text_column", "text_pair_column", "label_column",
             "labels", "metric", "format", "header", "columns", "hf_dataset", "hf_config", "hf_splits"}
IMAGE_KEYS = {"name", "kind", "description", "train", "dev", "image_size", "views", "channels", "labels", "metric"}
TEXT_METRICS = ("accuracy", "f1", "mcc")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def load_task_file(path: str | Path) -> Any:
    """The task a file describes, resolved and its files checked (one line on any problem)."""
    path = Path(path)
    if not path.exists():
        raise MtdError(f"task file {path} not found")
    if not path.is_file():  # a folder, a FIFO (reading it would block), a device
        raise MtdError(f"task file {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    try:
        content = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except ValueError as exc:
        raise MtdError(f"{path}: not a readable task file ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(content, dict):
        raise MtdError(f"{path}: a task file holds one object of settings, not {type(content).__name__}")
    source = {"path": str(path.resolve()), "content": content,
              "sha256": hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()}
    return _build(source, path.resolve().parent, resolved=None)


def from_record(record: dict[str, Any], data_dir: str | Path | None = None) -> Any:
    """A task rebuilt from what a store recorded of it (``record()``); ``data_dir`` replaces the file's folder."""
    base = Path(data_dir) if data_dir else Path(record["path"]).parent
    return _build(record, base, resolved=record.get("resolved"))


def _build(source: dict[str, Any], base: Path, resolved: dict[str, Any] | None) -> Any:
    content, where = source["content"], source["path"]
    kind = content.get("kind")
    if kind not in ("text", "image", "lm"):
        raise MtdError(f"{where}: kind {kind!r}: expected \"text\", \"image\" or \"lm\" (language modelling)")
    name = content.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise MtdError(f"{where}: name {name!r}: expected a short name (no '/'), e.g. \"reviews\"")
    if name.lower() in GLUE_TASKS or name in IMAGE_TASKS:
        raise MtdError(f"{where}: name {name!r} is a built-in task's: choose another name")
    valid = {"text": TEXT_KEYS, "image": IMAGE_KEYS, "lm": LM_KEYS}[kind]
    unknown = sorted(set(content) - valid)
    if unknown:
        raise MtdError(f"{where}: unknown key {unknown[0]!r} for a {kind} task; valid: {', '.join(sorted(valid))}")
    if kind == "text":
        return TextFileTask.build(source, base, resolved)
    if kind == "lm":
        return LmTask.build(source, base, resolved)
    return ImageFolderTask.build(source, base, resolved)


# ----------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextFileTask:
    """A text classification task from a task file: columns of CSV/TSV/JSONL files, or a Hugging Face dataset."""

    name: str
    source: dict[str, Any] = field(repr=False)  # {"path", "content", "sha256"}: what the store records
    base: Path
    label_names: tuple[str, ...]
    metric: str
    kind: ClassVar[str] = "text"
    extra_metrics: tuple[str, ...] = ()

    @classmethod
    def build(cls, source: dict[str, Any], base: Path, resolved: dict[str, Any] | None) -> TextFileTask:
        c, where = source["content"], source["path"]
        metric = c.get("metric", "accuracy")
        if metric not in TEXT_METRICS:
            raise MtdError(f"{where}: metric {metric!r}: valid for text tasks: {', '.join(TEXT_METRICS)} "
                           "(regression is not supported)")
        if c.get("hf_dataset") is None:
            for key in ("train", "dev"):
                _need(source, key, str)
            fmt = c.get("format")
            if fmt is not None and fmt not in ("csv", "tsv", "jsonl"):
                raise MtdError(f"{where}: format {fmt!r}: expected csv, tsv or jsonl")
        for key in ("text_column", "label_column"):
            _need(source, key, (str, int))
        task = cls(c["name"], source, base, (), metric)
        names = tuple(resolved["label_names"]) if resolved else _given_labels(source) \
            or _sorted_labels(task._raw("train", None)[4])
        if len(names) < 2 or len(set(names)) != len(names):
            raise MtdError(f"{where}: labels {list(names)}: expected two or more distinct labels")
        extra = ("accuracy",) if metric != "accuracy" else ()
        task = cls(c["name"], source, base, names, metric, extra)
        if resolved is None:  # a file loaded now: both splits are read and checked before any work
            for split in ("train", "dev"):
                task.read(split)
        return task

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.source["content"].get("text_pair_column") is not None

    def record(self) -> dict[str, Any]:
        return {**self.source, "resolved": {"label_names": list(self.label_names)}}

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        from .glue import compute_metrics

        return compute_metrics(self, predictions, labels)[self.metric]

    def read(self, split: str, data_dir: str | Path | None = None) -> GlueSplit:
        """A split as text columns and label ids; an unknown label is one line naming file, line and value."""
        path, lines, text_a, text_b, raw = self._raw(split, data_dir)
        ids = {name: i for i, name in enumerate(self.label_names)}
        labels = []
        for line, value in zip(lines, raw, strict=True):
            if value not in ids:
                seen = "training saw" if split != "train" else "the task's labels are"
                names = ", ".join(self.label_names[:20]) + (", ..." if len(self.label_names) > 20 else "")
                raise MtdError(f"{path}:{line}: label {value!r} is not a label of task {self.name} ({seen}: {names})")
            labels.append(ids[value])
        return GlueSplit(self.name, split, text_a, text_b, np.asarray(labels, dtype=np.int64),
                         [f"{split}-{line}" for line in lines], str(path))

    def _raw(self, split: str, data_dir: str | Path | None) -> tuple:
        """(source, line numbers, text A, text B or None, label values as text)."""
        c = self.source["content"]
        if c.get("hf_dataset") is not None:
            return _read_hf(self, split)
        base = Path(data_dir) if data_dir else self.base
        path = base / c["train" if split == "train" else "dev"]
        rows = read_rows(path, c.get("format") or FORMATS.get(path.suffix.lower()), c.get("header", True),
                         c.get("columns"), self.source["path"])
        cols = (c["text_column"], c.get("text_pair_column"), c["label_column"])
        for col in (x for x in cols if x is not None):
            if rows and col not in rows[0][1]:
                have = ", ".join(map(str, rows[0][1])) or "none"
                raise MtdError(f"{path}: no column {col!r} (task file {self.source['path']}); columns: {have}")
        if not rows:
            raise MtdError(f"{path}: no examples")
        text_a = [_text(r[cols[0]]) for _, r in rows]
        text_b = [_text(r[cols[1]]) for _, r in rows] if cols[1] is not None else None
        raw = []
        for line, r in rows:
            value = r[cols[2]]
            if value is None or (isinstance(value, str) and not value.strip()):
                raise MtdError(f"{path}:{line}: no label in column {cols[2]!r}")
            raw.append(_label_text(value))
        return path, [line for line, _ in rows], text_a, text_b, raw


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _label_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _sorted_labels(values: list[str]) -> tuple[str, ...]:
    distinct = set(values)
    try:
        return tuple(sorted(distinct, key=float))  # "2" before "10" when every label is a number
    except ValueError:
        return tuple(sorted(distinct))


def _read_hf(task: TextFileTask, split: str) -> tuple:
    c = task.source["content"]
    ds, where = hf_split(task.name, c, split, (c["text_column"], c.get("text_pair_column"), c["label_column"]))
    label = ds[c["label_column"]]
    names = getattr(ds.features[c["label_column"]], "names", None)
    raw = [names[v] if names else _label_text(v) for v in label]
    pair = ds[c["text_pair_column"]] if c.get("text_pair_column") else None
    return where, list(range(len(ds))), [_text(x) for x in ds[c["text_column"]]], \
        [_text(x) for x in pair] if pair is not None else None, raw

