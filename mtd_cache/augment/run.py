"""TinyBERT's data augmentation (Jiao et al. 2020), as its official ``data_augmentation.py`` does it.

Reference: huawei-noah/Pretrained-Language-Model, TinyBERT/data_augmentation.py (commit 170f475a).
Candidate positions and their replacement words (masked LM for one-piece words, GloVe for multi-piece
ones, the exact masked-LM input) are in ``candidates``. Then, per sentence (``augment``): each of
N rounds replaces every candidate position, with probability p (0.4), by a uniformly chosen candidate
(``random.choice`` first, then ``random.random() < p``) and joins the basic tokens with single spaces.
The original row is kept, first and verbatim; a round that repeats an earlier row is dropped (the
reference's ``if " ".join(new_sent) not in candidate_sents``), so an example gives at most N+1 rows.
N per task is the reference's ``default_params``, a field of the task's row (``GlueTask.augment_rounds``:
CoLA 30, MRPC 30, SST-2 20, MNLI 10, QQP 10, QNLI 20, RTE 30; WNLI the reference's ``--N`` default, 30);
K = 15, p = 0.4. Labels and other columns are copied.

Departures, each for a reason:
- Sentence pairs: both sentences are augmented (as the paper), and row r pairs variant r of sentence A
  with variant r of sentence B. The reference writes A's variants against the original B, then every B
  variant against the *last* A variant (``line`` is mutated in place): a bug, not a design.
- Randomness: ``numpy.random.default_rng((seed, example index))`` per example instead of the global,
  unseeded ``random`` module, so a resumed or parallel run writes the same bytes.
- Work in chunks of examples, each chunk's rows a shard written atomically; a rerun skips finished
  shards, and the shards are concatenated at the end. Masked-LM inference is batched per chunk.
- ``--rounds`` overrides the per-task N (the reference's table silently overrides ``--N``).
- Output: unquoted tab-separated fields, the mirror of the GLUE reader (``csv.QUOTE_NONE``). The
  reference's ``csv.writer`` quotes fields holding ``"``, and its own reader (quotechar None) then reads
  the quotes back as text. Written to cache/<task>/augmented/train_aug.tsv by default (the reference:
  into the GLUE folder), with a ``.source.npy`` sidecar (each row's example index) and a
  ``.settings.json`` sidecar (the settings, input hashes, row count, output hash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..core.errors import MtdError
from ..core.hashing import canonical_json, sha256_file, sha256_text
from ..core.progress import Progress
from ..core.runtime import resolve_device
from ..core.safe_files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    check_target,
    make_dirs,
    open_regular,
    read_text,
)
from ..tasks.augmented import sidecars
from ..tasks.glue import GlueTask, TsvLayout, get_glue_task, read_split, split_path
from .candidates import (
    GLOVE_LINES,
    MAX_MLM_LENGTH,
    MaskedLM,
    Sentence,
    Splitter,
    glove_neighbours,
    load_glove,
    load_mlm,
)

log = logging.getLogger(__name__)

FORMAT = "mtd-cache-augment"
VERSION = 1
DEFAULT_MLM = "bert-base-uncased"


@dataclass(frozen=True)
class AugmentConfig:
    """One augmentation run; ``rounds`` None = the task's N (CoLA 30, MRPC 30, SST-2 20, MNLI 10, ...)."""

    task: str
    data_dir: str | Path | None
    mlm: str = DEFAULT_MLM  # BERT masked LM (Hub name or folder)
    glove: Path | None = None  # GloVe text file; None = multi-piece words stay unchanged
    out: Path | None = None  # default cache/<task>/augmented/train_aug.tsv
    rounds: int | None = None  # N
    top_k: int = 15  # K (the reference's M)
    p: float = 0.4  # probability of replacing a candidate position
    seed: int = 0
    force_mlm: bool = False  # accept an MLM whose prediction head is newly initialised
    limit: int | None = None  # first N training examples only
    chunk_size: int = 128  # examples per shard (the unit of resume)
    batch_tokens: int = 16384  # padded tokens per masked-LM forward pass
    device: str | None = None


@dataclass(frozen=True)
class Augmented:
    """What a run wrote: the TSV, how many source examples, how many rows (originals included)."""

    path: Path
    examples: int
    rows: int
    wall_s: float


@dataclass(frozen=True)
class _Work:
    """Everything a chunk needs: the settings, the rows and their sentences, the candidate sources."""

    cfg: AugmentConfig
    rounds: int
    digest: str
    rows: list[list[str]]  # the raw TSV rows
    sents: list[list[Sentence]]  # per row, one Sentence per text column
    columns: list[int]  # the text columns (A, and B for pairs)
    neighbours: dict[str, list[str]]  # GloVe neighbours of the multi-piece candidate words
    mlm: MaskedLM


# --------------------------------------------------------------------------- rounds


def variants(sent: Sentence, candidates: Sequence[Sequence[str]], draws: np.ndarray, p: float) -> list[str]:
    """One text per round: ``draws[r, j] = (u_choice, u_replace)`` for candidate position j.

    As the reference, per position: pick a candidate uniformly, then replace with probability p.
    """
    out = []
    for r in range(draws.shape[0]):
        tokens = list(sent.tokens)
        for j, (pos, cands) in enumerate(zip(sent.positions, candidates, strict=True)):
            if draws[r, j, 1] < p:
                tokens[pos] = cands[min(int(draws[r, j, 0] * len(cands)), len(cands) - 1)]
        out.append(" ".join(tokens))
    return out


def example_rows(fields: Sequence[str], columns: Sequence[int], sents: Sequence[Sentence],
                 candidates: Sequence[Sequence[Sequence[str]]], rounds: int, p: float,
                 rng: np.random.Generator) -> list[list[str]]:
    """The original row, then round r's row with variant r of every text column (A_r with B_r)."""
    sizes = [len(s.positions) for s in sents]
    draws = rng.random((rounds, sum(sizes), 2))
    edges = np.cumsum([0, *sizes])
    texts = [variants(s, c, draws[:, a:b], p)
             for s, c, a, b in zip(sents, candidates, edges[:-1], edges[1:], strict=True)]
    rows, seen = [list(fields)], {tuple(fields[c] for c in columns)}
    for key in zip(*texts, strict=True):
        if key not in seen:  # the reference drops a repeated sentence
            seen.add(key)
            row = list(fields)
            for c, text in zip(columns, key, strict=True):
                row[c] = text
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- files


def default_out(task: str | GlueTask) -> Path:
    return Path("cache") / get_glue_task(task).name / "augmented" / "train_aug.tsv"


def text_columns(layout: TsvLayout) -> list[int]:
    return [layout.text_a] + ([layout.text_b] if layout.text_b is not None else [])


def read_rows(task: GlueTask, data_dir: str | Path) -> tuple[Path, list[str] | None, list[list[str]]]:
    """(file, header fields or None, data rows) of train.tsv, read as ``glue.read_split`` reads it."""
    import csv

    split = read_split(task, "train", data_dir)  # validates widths and labels, names the bad line
    path = split_path(task, "train", data_dir)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    header = rows.pop(0) if task.train.has_header and rows else None
    if len(rows) != len(split):
        raise MtdError(f"{path}: read {len(rows)} rows but the GLUE reader read {len(split)}")
    return path, header, rows


def tsv_lines(rows: Sequence[Sequence[str]]) -> str:
    """Rows as the GLUE reader reads them back: tab-separated, unquoted, one per line."""
    bad = next((f for r in rows for f in r if "\t" in f or "\n" in f or "\r" in f), None)
    if bad is not None:
        raise MtdError(f"a field holds a tab or newline and cannot be written to a TSV: {bad[:60]!r}")
    return "".join("\t".join(r) + "\n" for r in rows)


def _shard(folder: Path, start: int) -> Path:
    return folder / f"chunk-{start:09d}.json"


def _load_shard(path: Path, digest: str, start: int, stop: int) -> dict | None:
    """A finished shard of these settings and examples, or None (missing, damaged, other settings)."""
    try:
        shard = json.loads(read_text(path))
        ok = (shard["digest"], shard["start"], shard["stop"]) == (digest, start, stop)
        return shard if ok and len(shard["rows"]) == len(shard["source"]) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- the run


def augment_task(cfg: AugmentConfig) -> Augmented:
    """Augment the task's train.tsv into ``cfg.out`` (resumable: one shard per chunk of examples)."""
    t0 = time.perf_counter()
    task = get_glue_task(cfg.task)
    _validate(cfg)
    if cfg.data_dir is None:
        raise MtdError("augment reads the task's train.tsv: pass --data-dir (a GLUE folder holding "
                       f"{task.dir_name}/{task.train.file})")
    out = Path(cfg.out) if cfg.out else default_out(task)
    path, header, rows = read_rows(task, cfg.data_dir)
    rows = rows[:cfg.limit] if cfg.limit else rows
    identity = _identity(cfg, task, path)
    digest = sha256_text(canonical_json(identity))
    info = {"source_file": str(path.resolve()), "glove_file": str(Path(cfg.glove).resolve()) if cfg.glove else None}
    if _complete(out, digest):
        log.info("%s is complete already (same settings); remove it to augment again", out)
        with open_regular(sidecars(out)[0]) as f:
            source = np.load(f, allow_pickle=False)
        return Augmented(out, len(rows), len(source), time.perf_counter() - t0)
    model, tokenizer, missing = load_mlm(cfg.mlm, cfg.force_mlm)
    device = resolve_device(cfg.device)
    splitter = Splitter(tokenizer)
    columns = text_columns(task.train)
    sents = [[splitter(r[c]) for c in columns] for r in rows]
    work = _Work(cfg, identity["rounds"], digest, rows, sents, columns, _neighbours(cfg, sents, device),
                 MaskedLM(model, tokenizer, cfg.top_k, cfg.batch_tokens, device))
    shards = _run_chunks(work, identity, out)
    n = _finish(out, header, shards, {**identity, **info, "digest": digest, "mlm_head_missing": missing,
                                     "examples": len(rows), "wall_s": time.perf_counter() - t0})
    return Augmented(out, len(rows), n, time.perf_counter() - t0)


def _validate(cfg: AugmentConfig) -> None:
    checks = [(cfg.top_k >= 1, "--top-k", cfg.top_k, "must be >= 1"),
              (0.0 <= cfg.p <= 1.0, "--p", cfg.p, "must be in [0, 1]"),
              (cfg.rounds is None or cfg.rounds >= 0, "--rounds", cfg.rounds, "must be >= 0"),
              (cfg.limit is None or cfg.limit >= 1, "--limit", cfg.limit, "must be >= 1"),
              (cfg.chunk_size >= 1 and cfg.batch_tokens >= 1, "chunk_size/batch_tokens",
               (cfg.chunk_size, cfg.batch_tokens), "must be >= 1"),
              (cfg.glove is None or Path(cfg.glove).is_file(), "--glove", str(cfg.glove), "no such file")]
    for ok, option, value, why in checks:
        if not ok:
            raise MtdError(f"{option} {value!r}: {why}")


def _identity(cfg: AugmentConfig, task: GlueTask, source: Path) -> dict[str, Any]:
    """Everything the output depends on (files by content, not by path); a resume must match it."""
    rounds = task.augment_rounds if cfg.rounds is None else cfg.rounds
    return {"format": FORMAT, "version": VERSION, "package_version": __version__, "task": task.name,
            "source_sha256": sha256_file(source), "limit": cfg.limit, "mlm": str(cfg.mlm),
            "glove_sha256": sha256_file(cfg.glove) if cfg.glove else None, "glove_lines": GLOVE_LINES,
            "top_k": cfg.top_k, "p": cfg.p, "rounds": rounds, "seed": cfg.seed,
            "rng": "numpy default_rng((seed, index))", "chunk_size": cfg.chunk_size,
            "batch_tokens": cfg.batch_tokens, "max_mlm_length": MAX_MLM_LENGTH}


def _complete(out: Path, digest: str) -> bool:
    """True when ``out`` and its sidecars are a finished run of these settings; MtdError for others."""
    source, settings, _ = sidecars(out)
    if not out.exists():
        return False
    try:
        done = json.loads(read_text(settings))
    except (OSError, ValueError):
        raise MtdError(f"{out} exists without readable settings ({settings}); remove it or choose "
                       f"another --out") from None
    if done.get("digest") != digest:
        raise MtdError(f"{out} holds an augmentation with other settings (seed {done.get('seed')}, "
                       f"N {done.get('rounds')}, mlm {done.get('mlm')!r}); remove it or choose another --out")
    if not source.exists() or done.get("output_sha256") != sha256_file(out):
        raise MtdError(f"{out} does not match its settings file (interrupted?); remove it to augment again")
    return True


def _neighbours(cfg: AugmentConfig, sents: list[list[Sentence]], device: torch.device) -> dict[str, list[str]]:
    """GloVe neighbours of every distinct multi-piece candidate word of the data set, computed once."""
    multi = [s.tokens[i] for ss in sents for s in ss for i in s.positions if len(s.pieces[i]) > 1]
    distinct = sorted(set(multi))
    if cfg.glove is None:
        if multi:
            log.warning("no --glove: %d multi-piece candidate words (%d distinct) stay unchanged",
                        len(multi), len(distinct))
        return {}
    words, unit = load_glove(Path(cfg.glove))
    near = glove_neighbours(distinct, words, unit, cfg.top_k, device)
    missing = sum(not v for v in near.values())
    log.info("GloVe neighbours of %d distinct multi-piece words (%d not in the first %d GloVe lines)",
             len(distinct), missing, GLOVE_LINES)
    return near


def _run_chunks(work: _Work, identity: dict[str, Any], out: Path) -> list[dict]:
    """Every chunk's shard, computing only those not already finished under these settings."""
    folder = sidecars(out)[2]
    marker = folder / "settings.json"
    check_target(folder, "folder")  # the shards' folder: never a planted link
    if folder.exists() and _read_json(marker).get("digest") != work.digest:
        log.warning("discarding %s: it was written with other settings", folder)
        shutil.rmtree(folder)
    make_dirs(folder)
    atomic_write_json(marker, {**identity, "digest": work.digest})
    shards, n = [], len(work.rows)
    with Progress(n, "augment", unit="ex") as bar:
        for start in range(0, n, work.cfg.chunk_size):
            stop = min(n, start + work.cfg.chunk_size)
            shard = _load_shard(_shard(folder, start), work.digest, start, stop)
            if shard is None:
                shard = _chunk(work, start, stop)
                atomic_write_bytes(_shard(folder, start), json.dumps(shard).encode())
            shards.append(shard)
            bar.update(stop - start)
    return shards


def _read_json(path: Path) -> dict:
    try:
        return json.loads(read_text(path))
    except (OSError, ValueError):
        return {}


def _chunk(work: _Work, start: int, stop: int) -> dict:
    """Rows of examples ``start:stop``: candidates (one batched MLM pass), then the rounds."""
    cands: list[list[list[list[str]]]] = []  # example, sentence, position -> candidate words
    jobs, inputs = [], []
    for e in range(start, stop):
        cands.append([])
        for j, s in enumerate(work.sents[e]):
            cands[-1].append([])
            for k, pos in enumerate(s.positions):
                word = s.tokens[pos]
                if len(s.pieces[pos]) > 1:
                    cands[-1][j].append(work.neighbours.get(word) or [word])  # OOV or no GloVe: the word itself
                    continue
                cands[-1][j].append([word])  # until the masked LM answers
                row = work.mlm.input_for(s, pos)
                if row is not None:
                    jobs.append((e - start, j, k))
                    inputs.append(row)
    for (e, j, k), words in zip(jobs, work.mlm.predict(inputs), strict=True):
        cands[e][j][k] = words or cands[e][j][k]
    out_rows, source = [], []
    for e in range(start, stop):
        rng = np.random.default_rng((work.cfg.seed, e))
        new = example_rows(work.rows[e], work.columns, work.sents[e], cands[e - start], work.rounds, work.cfg.p, rng)
        out_rows += new
        source += [e] * len(new)
    return {"digest": work.digest, "start": start, "stop": stop, "rows": out_rows, "source": source}


def _finish(out: Path, header: list[str] | None, shards: list[dict], settings: dict[str, Any]) -> int:
    """Concatenate the shards into ``out``; the sidecars first, the TSV (the completion mark) last."""
    rows = [r for s in shards for r in s["rows"]]
    text = tsv_lines(([header] if header is not None else []) + rows).encode("utf-8")
    source_path, settings_path, folder = sidecars(out)
    with atomic_path(source_path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray([i for s in shards for i in s["source"]], dtype=np.int64))
    atomic_write_json(settings_path, {**settings, "rows": len(rows), "output_sha256": hashlib.sha256(text).hexdigest(),
                                      "output": str(out)})
    atomic_write_bytes(out, text)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("wrote %s: %d rows from %d examples", out, len(rows), settings["examples"])
    return len(rows)
