"""Rows of a task file's splits: CSV (quoted fields), TSV (tab-separated, unquoted, as GLUE's) or JSONL (one
object per line), each row with its line number, every problem one line naming the file and the line; or a
Hugging Face dataset's split (``hf_split``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..core.errors import MtdError
from ..core.safe_files import not_utf8


def read_rows(path: Path, fmt: str | None, header: bool, columns: list | None,
               task_file: str) -> list[tuple[int, dict[Any, Any]]]:
    """(line number, {column: value}) of every example of a CSV, TSV or JSONL file."""
    if not path.is_file():
        raise MtdError(f"{path} not found (task file {task_file})")
    if fmt not in ("csv", "tsv", "jsonl"):
        raise MtdError(f"{path}: unknown format: name the file .csv, .tsv or .jsonl, or set \"format\" "
                       f"in {task_file}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return _jsonl_rows(path, f) if fmt == "jsonl" else _csv_rows(path, f, fmt, header, columns)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _jsonl_rows(path: Path, f: Any) -> list[tuple[int, dict[Any, Any]]]:
    out = []
    for line, text in enumerate(f, 1):
        if text.strip():
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise MtdError(f"{path}:{line}: not a JSON object ({exc})") from None
            if not isinstance(obj, dict):
                raise MtdError(f"{path}:{line}: not a JSON object")
            out.append((line, obj))
    return out


def _csv_rows(path: Path, f: Any, fmt: str, header: bool, columns: list | None) -> list[tuple[int, dict[Any, Any]]]:
    out: list[tuple[int, dict[Any, Any]]] = []
    reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",",
                        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    names = columns
    try:
        for fields in reader:
            if not fields:
                continue
            if names is None:
                names = fields if header else list(range(len(fields)))
                if header:
                    continue
            if len(fields) != len(names):
                raise MtdError(f"{path}:{reader.line_num}: {len(fields)} fields, the header has {len(names)}")
            out.append((reader.line_num, dict(zip(names, fields, strict=True))))
    except csv.Error as exc:  # a field over csv's limit (131,072 characters), a NUL byte, an open quote
        raise MtdError(f"{path}:{reader.line_num}: {exc}") from None
    return out


def hf_split(task_name: str, content: dict[str, Any], split: str, columns: tuple[Any, ...]) -> tuple[Any, str]:
    """A task file's Hugging Face dataset split (``hf_dataset``, ``hf_config``, ``hf_splits``; dev is
    "validation" unless renamed) and how messages name it, its ``columns`` checked; one line on any failure."""
    splits = {"train": "train", "dev": "validation", **(content.get("hf_splits") or {})}
    try:
        import datasets
    except ImportError:
        raise MtdError(f"task {task_name} reads the Hugging Face dataset {content['hf_dataset']!r}: "
                       "pip install 'mtd-cache[datasets]'") from None
    where = f"hf:{content['hf_dataset']}/{content.get('hf_config')}[{splits[split]}]"
    try:
        ds = datasets.load_dataset(content["hf_dataset"], content.get("hf_config"), split=splits[split])
    except Exception as exc:  # network, hub, cache: one line
        raise MtdError(f"could not load {where}: {' '.join(str(exc).split())[:160]}") from None
    for col in (c for c in columns if c is not None):
        if col not in ds.column_names:
            raise MtdError(f"{where}: no column {col!r}; columns: {', '.join(ds.column_names)}")
    return ds, where
