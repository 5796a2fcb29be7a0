"""Tokenised text data: one split as flat token ids, length-bucketed training batches, padded collation.

Tokenised data is kept flat (ids back to back plus offsets, like the store's
states) and padded per batch to that batch's longest example ("dynamic
padding"). Training batches group examples of similar length in the manner of
Hugging Face's ``trainer_pt_utils.get_length_grouped_indices`` (shuffle, sort
within mega-batches of 50 batches); inference sorts everything by length.

Teachers, the dump and text students all read their data through here, so a
student tokenises exactly as the dump did (``fingerprint``), and is refused when not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.hashing import sha256_file
from ..core.prefetch import Ahead
from ..core.runtime import epoch_generator
from .augmented import read_augmented
from .fingerprint import task_fingerprint
from .glue import GlueSplit, get_glue_task

MEGABATCH = 50  # batches per length-sorted mega-batch (HF get_length_grouped_indices' mega_batch_mult)


@dataclass(frozen=True)
class Encoded:
    """A tokenised split: token ids of all examples back to back; example i is ``offsets[i]:offsets[i+1]``."""

    ids: np.ndarray  # (R,) int32
    types: np.ndarray  # (R,) int8 segment ids
    offsets: np.ndarray  # (N+1,) int64
    labels: np.ndarray  # (N,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Encoded:
        """The first ``n`` examples (``--train-subset``)."""
        end = int(self.offsets[n])
        return Encoded(self.ids[:end], self.types[:end], self.offsets[:n + 1], self.labels[:n])


def load_split(task: Any, split: str, data_dir: str | Path | None) -> GlueSplit:
    """A split of a text task: a task file's files (``data_dir`` replacing its folder), or a GLUE split from
    ``data_dir``'s TSV files, or from the Hub (``datasets``) when no folder is given."""
    return get_glue_task(task).read(split, data_dir)


@dataclass(frozen=True)
class TaskInputs:
    """What a dump caches and a student trains on: the tokenised splits and each training row's source."""

    task: Any  # the task (a GLUE row, or a task file's)
    max_length: int
    train: Encoded
    dev: Encoded
    source: np.ndarray  # (N,) int64: the original example of each training row (itself without augmentation)
    augmented: dict[str, str] | None = None  # {"path", "sha256"} of TinyBERT's augmented file, if used

    def fingerprint(self, tokenizer: dict[str, str]) -> str:
        return text_fingerprint(self.task, tokenizer, self.max_length, self.train, self.dev,
                                self.source if self.augmented else None)


def task_inputs(task: Any, tokenizer, max_length: int, data_dir: str | Path | None,
                augmented: str | Path | None = None, train_subset: int | None = None) -> TaskInputs:
    """The task's splits tokenised; the training rows from ``augmented`` (``mtd-cache augment``) when given."""
    if augmented:
        if not Path(augmented).is_file():
            raise MtdError(f"augmented file {augmented} not found (write it with mtd-cache augment --task "
                           f"{get_glue_task(task).name})")
        split, source = read_augmented(task, augmented)
        aug = {"path": str(Path(augmented).resolve()), "sha256": sha256_file(augmented)}
    else:
        split = load_split(task, "train", data_dir)
        source, aug = np.arange(len(split), dtype=np.int64), None
    train = encode(tokenizer, split, max_length)
    if train_subset:
        n = min(int(train_subset), len(train))
        train, source = train.head(n), source[:n]
    dev = encode(tokenizer, load_split(task, "dev", data_dir), max_length)
    return TaskInputs(task, int(max_length), train, dev, source, aug)


def encode(tokenizer, split: GlueSplit, max_length: int) -> Encoded:
    """Tokenise ``[CLS] a [SEP] (b [SEP])``, truncating the longer text first (as TinyBERT's
    ``_truncate_seq_pair``), no padding."""
    args = (split.text_a, split.text_b) if split.text_b is not None else (split.text_a,)
    enc = tokenizer(*args, truncation=True, max_length=int(max_length), return_token_type_ids=True)
    ids, types = enc["input_ids"], enc["token_type_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    flat_types = np.fromiter((t for x in types for t in x), dtype=np.int8, count=int(offsets[-1]))
    return Encoded(flat, flat_types, offsets, np.asarray(split.labels, dtype=np.int64))


def bucket_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator,
                   megabatch: int = MEGABATCH) -> list[np.ndarray]:
    """Training batches of similar length, in a seeded random order; every example once.

    Shuffle, cut into mega-batches of ``megabatch * batch_size``, sort each by
    length, cut into batches, shuffle the batches. The last batch may be partial
    (kept: nothing is silently dropped, unlike TinyBERT's loop).
    """
    perm = torch.randperm(len(lengths), generator=generator).numpy()
    size = megabatch * batch_size
    batches = []
    for lo in range(0, len(perm), size):
        mega = perm[lo:lo + size]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]
        batches += [mega[i:i + batch_size] for i in range(0, len(mega), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches: positions sorted by length, longest first (an out-of-memory shows at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(enc: Encoded, index: Sequence[int], pad_id: int = 0, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad the examples ``index`` to the batch's longest (or ``pad_to``): BERT inputs, labels, index."""
    index = np.asarray(index, dtype=np.int64)
    starts, lens = enc.offsets[index], enc.lengths[index]
    width = int(lens.max()) if pad_to is None else int(pad_to)
    cols = np.arange(width)
    mask = cols[None, :] < lens[:, None]
    src = (starts[:, None] + cols[None, :])[mask]
    ids = np.full((len(index), width), pad_id, dtype=np.int64)
    ids[mask] = enc.ids[src]
    types = np.zeros((len(index), width), dtype=np.int64)
    types[mask] = enc.types[src]
    return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "labels": torch.from_numpy(enc.labels[index]), "index": torch.from_numpy(index)}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def text_fingerprint(task: Any, tokenizer: dict[str, str], max_length: int, train: Encoded,
                     dev: Encoded | None, source: np.ndarray | None = None) -> str:
    """The store fingerprint of tokenised GLUE data (``Fingerprint``, see store/format.py).

    Over: task name, the tokenizer's content hash (``bert.tokenizer_identity``; not
    its name, which is a location), max length, and per split the token ids in
    order, their lengths and the labels; for an augmented training set, each row's
    source example too. A student computes it from its own tokenisation and must
    get the store's.
    """
    fp = task_fingerprint(task).update("tokenizer", tokenizer["sha256"])
    fp.update("max_length", int(max_length))
    for name, enc in (("train", train), ("dev", dev)):
        if enc is not None:
            fp.update(f"{name}/ids", enc.ids).update(f"{name}/lengths", enc.lengths)
            fp.update(f"{name}/labels", enc.labels)
    if source is not None:
        fp.update("train/source", np.asarray(source, dtype=np.int64))
    return fp.hexdigest()


def epoch_batches(enc: Encoded, batch_size: int, seed: int, fetch: Callable[[dict], dict] | None = None,
                  depth: int = 0, stream: int = 0, pad_to: int | None = None) -> Callable[[int], Ahead]:
    """epoch -> that epoch's training batches: length-bucketed, in the order seeded by (seed, epoch, stream),
    collated (to ``pad_to`` if given), passed through ``fetch`` (teacher reads), ``depth`` ahead in a thread."""
    def batches(epoch: int) -> Ahead:
        order = bucket_batches(enc.lengths, batch_size, epoch_generator(seed, epoch, stream))
        def collated(idx: np.ndarray) -> dict:
            return collate(enc, idx, pad_to=pad_to) if fetch is None else fetch(collate(enc, idx, pad_to=pad_to))
        return Ahead(order, collated, depth=depth)

    return batches
