"""Language-modelling tasks from task files: a corpus of documents, tokenised by the teachers' tokenizer, cut into
sequences of at most ``block_size`` tokens (``"kind": "lm"``; docs/guide.md, "Language models").

    {"name": "fortunes", "kind": "lm", "train": "train.txt", "dev": "dev.txt", "block_size": 128,
     "packing": "packed", "separator": "%"}

A split is a plain-text file (``.txt``, or ``"format": "text"``: documents separated by blank lines, or by lines
equal to ``"separator"``), a JSONL/CSV/TSV file with a ``"text_column"``, or a Hugging Face dataset
(``"hf_dataset"``, ``"hf_config"``, ``"hf_splits"``, with the ``datasets`` extra). Documents are tokenised
without special tokens and end with the tokenizer's end-of-sequence token (when it has one; ``"add_eos":
false`` leaves it out). ``"packing"``:

* ``"packed"`` (the default, as Hugging Face's ``run_clm.py`` groups texts): every document back to back, cut
  into blocks of exactly ``block_size`` tokens; the last, shorter block is dropped (its tokens are counted);
* ``"document"``: each document its own sequence, split into pieces of at most ``block_size`` tokens (pieces of
  one token predict nothing and are dropped).

Every token of a sequence but the first is predicted from those before it: a sequence of L tokens has L - 1
positions. The metric is perplexity, exp of the mean next-token NLL over every predicted position of the split
(lower is better).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import MtdError
from ..core.safe_files import not_utf8
from .rows import hf_split, read_rows

LM_KEYS = {"name", "kind", "description", "train", "dev", "format", "text_column", "separator", "block_size",
           "packing", "add_eos", "header", "hf_dataset", "hf_config", "hf_splits"}
PACKINGS = ("packed", "document")
LM_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class Sequences:
    """A tokenised split: sequences back to back (``ids``), sequence i is ``starts[i]:starts[i+1]``."""

    ids: np.ndarray  # (T,) int32
    starts: np.ndarray  # (S + 1,) int64
    dropped: int = 0  # tokens of the split left out (a packed split's last, shorter block)

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def positions(self) -> int:
        """Predicted positions: every token of a sequence but the first."""
        return int(np.maximum(self.lengths - 1, 0).sum())

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.starts[i]:self.starts[i + 1]]

    def head(self, n: int) -> Sequences:
        return Sequences(self.ids[:self.starts[n]], self.starts[:n + 1], self.dropped)

    def rows(self, a: int, b: int) -> list[np.ndarray]:
        return [self[i] for i in range(a, b)]

    def sha256(self) -> str:
        """sha256 of the token ids and sequence starts: the same split, tokenised alike."""
        h = hashlib.sha256(np.ascontiguousarray(self.ids, np.int32).tobytes())
        h.update(np.ascontiguousarray(self.starts, np.int64).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class LmTask:
    """A language-modelling task from a task file (module docstring)."""

    name: str
    source: dict[str, Any] = field(repr=False)  # {"path", "content", "sha256"}: what a store records
    base: Path
    block_size: int
    packing: str
    kind: ClassVar[str] = "lm"
    metric: ClassVar[str] = "perplexity"
    label_names: ClassVar[tuple[str, ...]] = ()
    num_labels: ClassVar[int] = 0
    extra_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)  # next-token accuracy

    @classmethod
    def build(cls, source: dict[str, Any], base: Path, resolved: dict[str, Any] | None) -> LmTask:
        c, where = source["content"], source["path"]
        block = c.get("block_size", 128)
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise MtdError(f"{where}: block_size {block!r}: expected an integer >= 2 (tokens per sequence)")
        packing = c.get("packing", "packed")
        if packing not in PACKINGS:
            raise MtdError(f"{where}: packing {packing!r}: expected {' or '.join(PACKINGS)}")
        if c.get("hf_dataset") is None:
            for key in ("train", "dev"):
                if not isinstance(c.get(key), str) or not c[key]:
                    raise MtdError(f"{where}: {key} {c.get(key)!r}: expected the path of a text, JSONL, CSV or "
                                   "TSV file (or hf_dataset)")
        fmt = c.get("format")
        if fmt is not None and fmt not in ("text", "jsonl", "csv", "tsv"):
            raise MtdError(f"{where}: format {fmt!r}: expected text, jsonl, csv or tsv")
        sep = c.get("separator")
        if sep is not None and not isinstance(sep, str):
            raise MtdError(f"{where}: separator {sep!r}: expected the text of the line between documents")
        if not isinstance(c.get("add_eos", True), bool):
            raise MtdError(f"{where}: add_eos {c.get('add_eos')!r}: expected true or false")
        task = cls(c["name"], source, base, block, packing)
        if resolved is None:  # a file loaded now: both splits read and checked before any work
            for split in ("train", "dev"):
                task.documents(split)
        return task

    def record(self) -> dict[str, Any]:
        return {**self.source, "resolved": {"kind": "lm"}}

    def score(self, predictions: Any, labels: Any) -> float:
        raise MtdError(f"task {self.name} is a language-modelling task: it is scored in perplexity, not on labels")

    # ------------------------------------------------------------------ documents and sequences

    def documents(self, split: str, data_dir: str | Path | None = None) -> list[str]:
        """The split's documents, in file order (empty ones left out); one line naming the file on a problem."""
        c = self.source["content"]
        if c.get("hf_dataset") is not None:
            return _hf_documents(self, split)
        path = (Path(data_dir) if data_dir else self.base) / c["train" if split == "train" else "dev"]
        fmt = c.get("format") or LM_FORMATS.get(path.suffix.lower())
        if not path.is_file():
            raise MtdError(f"{path} not found (task file {self.source['path']})")
        if fmt is None:
            raise MtdError(f"{path}: unknown format: name the file .txt, .jsonl, .csv or .tsv, or set \"format\" in "
                           f"{self.source['path']}")
        if fmt == "text":
            try:
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                raise not_utf8(path) from None
            docs = _split_documents(text, c.get("separator"))
        else:
            col = c.get("text_column")
            if col is None:
                raise MtdError(f"{self.source['path']}: text_column is needed to read {path} ({fmt})")
            rows = read_rows(path, fmt, c.get("header", True), None, self.source["path"])
            if rows and col not in rows[0][1]:
                raise MtdError(f"{path}: no column {col!r} (task file {self.source['path']}); columns: "
                               f"{', '.join(map(str, rows[0][1]))}")
            docs = ["" if r[col] is None else str(r[col]) for _, r in rows]
        docs = [d for d in docs if d.strip()]
        if not docs:
            raise MtdError(f"{path}: no text")
        return docs

    def sequences(self, tokenizer: Any, split: str, data_dir: str | Path | None = None) -> Sequences:
        """The split tokenised and cut into sequences (module docstring)."""
        docs = self.documents(split, data_dir)
        eos = getattr(tokenizer, "eos_token_id", None) if self.source["content"].get("add_eos", True) else None
        encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
        pieces = [np.asarray(ids + ([eos] if eos is not None else []), dtype=np.int64) for ids in encoded]
        bound = _vocab_bound(tokenizer)
        top = max((int(p.max()) for p in pieces if len(p)), default=0)
        if top >= bound:
            raise MtdError(f"tokenizer gave id {top}, beyond its vocabulary of {bound}")
        n = self.block_size
        if self.packing == "packed":
            flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
            blocks = len(flat) // n
            if blocks == 0:
                raise MtdError(f"task {self.name}: the {split} split has {len(flat)} tokens, fewer than one block of "
                               f"{n} (lower block_size, or packing \"document\")")
            return Sequences(flat[:blocks * n].astype(np.int32), np.arange(blocks + 1, dtype=np.int64) * n,
                             int(len(flat) - blocks * n))
        cut = [p[i:i + n] for p in pieces for i in range(0, len(p), n)]
        kept = [c for c in cut if len(c) >= 2]
        if not kept:
            raise MtdError(f"task {self.name}: no {split} document has two tokens")
        starts = np.concatenate([[0], np.cumsum([len(c) for c in kept])]).astype(np.int64)
        return Sequences(np.concatenate(kept).astype(np.int32), starts, int(sum(len(c) for c in cut if len(c) < 2)))

    def fingerprint(self, tokenizer_id: dict[str, str], train: Sequences, dev: Sequences) -> str:
        """sha256 of the task file's content, the tokenizer and both splits' token ids."""
        h = hashlib.sha256(json.dumps({"task": self.source["sha256"], "tokenizer": tokenizer_id,
                                       "block_size": self.block_size, "packing": self.packing},
                                      sort_keys=True).encode())
        for s in (train, dev):
            h.update(np.ascontiguousarray(s.ids, np.int32).tobytes())
            h.update(np.ascontiguousarray(s.starts, np.int64).tobytes())
        return h.hexdigest()


def _vocab_bound(tokenizer: Any) -> int:
    return max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))


def _split_documents(text: str, separator: str | None) -> list[str]:
    """Blank lines between documents, or lines equal to ``separator`` (fortune files' ``%``)."""
    lines = text.splitlines()
    docs, cur = [], []
    for line in lines:
        if (line.strip() == separator) if separator is not None else not line.strip():
            docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
    return docs


def _hf_documents(task: LmTask, split: str) -> list[str]:
    c = task.source["content"]
    col = c.get("text_column", "text")
    ds, _ = hf_split(task.name, c, split, (col,))
    return [x for x in ("" if v is None else str(v) for v in ds[col]) if x.strip()]


def unigram_perplexity(train: Sequences, dev: Sequences, vocab: int) -> float:
    """The perplexity on ``dev``'s predicted positions of the training tokens' unigram distribution, add-one
    smoothed over the ``vocab`` ids: the quality gate's bar (a model no better has learnt no context)."""
    counts = np.bincount(train.ids, minlength=vocab).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    predicted = np.concatenate([dev[i][1:] for i in range(len(dev))]) if len(dev) else np.zeros(0, np.int64)
    return float(np.exp(-log_p[predicted].mean())) if len(predicted) else float("nan")
