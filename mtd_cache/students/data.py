"""A student's data: the inputs its store cached, rebuilt here and checked against the store's fingerprint.

A student never trusts that the data it finds is what the teachers saw: text is tokenised again with
the store's tokenizer and length and must fingerprint to the store's inputs; images must hash to the
store's pixels, labels and views; the test labels must be those the teachers were scored on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..models import bert
from ..store import TeacherStore
from ..tasks.image_data import ImageData, image_fingerprint
from ..tasks.registry import task_of_store
from ..tasks.text_data import TaskInputs, task_inputs

# ----------------------------------------------------------------------------- text


def store_inputs(store: TeacherStore, tokenizer: str | None = None, max_length: int | None = None,
                 data_dir: str | Path | None = None) -> tuple[Any, TaskInputs]:
    """(tokenizer, inputs) of a text store, rebuilt from its recorded sources and checked against its fingerprint.

    ``tokenizer`` / ``max_length`` / ``data_dir`` override the store's; anything that
    tokenises differently is refused, naming the difference (``check_text_store``).
    """
    if store.tokenizer is None:
        raise MtdError(f"{store.path} is not a text store dumped by mtd-cache (no tokenizer recorded)")
    tok = bert.load_tokenizer(tokenizer or store.tokenizer["name"])
    max_length = int(max_length or store.max_length)
    augmented = (store.augmented or {}).get("path")
    if augmented and not Path(augmented).exists():
        raise MtdError(f"{store.path} was dumped from the augmented file {augmented}, which is gone")
    inputs = task_inputs(task_of_store(store), tok, max_length, data_dir or store.data_dir, augmented,
                         store.num_examples if store.train_subset else None)
    ident = bert.tokenizer_identity(tok)
    check_text_store(store, ident, max_length, inputs.fingerprint(ident))
    return tok, inputs


def check_text_store(store: TeacherStore, tokenizer: dict[str, str], max_length: int, fingerprint: str) -> None:
    """Refuse a store made from other inputs, naming what differs with both values."""
    if fingerprint == store.fingerprint:
        return
    theirs = store.tokenizer or {}
    if theirs.get("sha256") != tokenizer["sha256"]:
        raise MtdError(f"tokenizer mismatch: the student's {tokenizer['name']!r} (sha256 {tokenizer['sha256'][:12]}) "
                       f"is not the store's {theirs.get('name')!r} (sha256 {str(theirs.get('sha256'))[:12]})")
    if store.max_length != int(max_length):
        raise MtdError(f"max_length mismatch: the student's {max_length} is not the store's "
                       f"{store.max_length} ({store.path})")
    augmented = (store.augmented or {}).get("path")
    where = f"the augmented file {augmented} changed since the dump" if augmented else \
        f"check --data-dir (the store used {store.data_dir!r})"
    raise MtdError(f"{store.path} was made from other task data (fingerprint {store.fingerprint[:12]}, "
                   f"the student's {fingerprint[:12]}): {where}")


# ----------------------------------------------------------------------------- images


def store_train_images(store: TeacherStore, data_dir: str | None, device: torch.device) -> ImageData:
    """The store's training images, refused unless they fingerprint to what the store cached."""
    train = ImageData.load(task_of_store(store), "train", data_dir or store.data_dir, device, store.train_subset)
    got = image_fingerprint(train, store.views)
    if got != store.fingerprint:
        raise MtdError(f"the {store.task} training data found here fingerprint to {got}, but {store.path} "
                       f"was dumped from {store.fingerprint}: other images, labels or views")
    return train


def store_test_images(store: TeacherStore, data_dir: str | None, device: torch.device) -> ImageData:
    """The test images the store's dev logits were computed on (its ``test_subset``), labels checked."""
    test = ImageData.load(task_of_store(store), "test", data_dir or store.data_dir, device, store.test_subset)
    if store.dev_labels is not None and not np.array_equal(test.labels.cpu().numpy(), store.dev_labels):
        raise MtdError(f"the {store.task} test images found here ({len(test)}) are not those {store.path} "
                       f"scored its teachers on ({len(store.dev_labels)}): other labels or order")
    return test


# ----------------------------------------------------------------------------- for your own training loop


def store_images(store: TeacherStore | str | Path, split: str = "train", device: torch.device | str | None = None,
                 data_dir: str | None = None) -> ImageData:
    """An image store's training images (``split`` "train", checked against its fingerprint) or its test images
    ("test", the ones its dev logits were computed on), normalised, on ``device``. ``.batch(index, views)``
    gives the images of ``index`` under view rows ``store.views[view]``; ``.labels`` their classes."""
    store = store if isinstance(store, TeacherStore) else TeacherStore.open(store)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if split not in ("train", "test"):
        raise MtdError(f"split {split!r}: expected train or test")
    return store_train_images(store, data_dir, dev) if split == "train" else store_test_images(store, data_dir, dev)


class TextExamples(torch.utils.data.Dataset):
    """A text store's examples tokenised exactly as the store's inputs were (fingerprint-checked), as a dataset
    of dicts for Hugging Face's ``DataCollatorWithPadding``: ``input_ids``, ``token_type_ids``,
    ``attention_mask``, ``labels`` and, for the training split, ``index`` (the store row of the example).

    ``split``: "train" (the store's rows) or "dev" (the evaluation split; no ``index``: no KD targets)."""

    def __init__(self, store: TeacherStore | str | Path, split: str = "train", data_dir: str | None = None):
        if split not in ("train", "dev"):
            raise MtdError(f"split {split!r}: expected train or dev")
        self.store = store if isinstance(store, TeacherStore) else TeacherStore.open(store)
        self.tokenizer, inputs = store_inputs(self.store, data_dir=data_dir)
        self.split, self.encoded = split, getattr(inputs, split)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        enc = self.encoded
        a, b = int(enc.offsets[i]), int(enc.offsets[i + 1])
        item = {"input_ids": enc.ids[a:b].tolist(), "token_type_ids": enc.types[a:b].tolist(),
                "attention_mask": [1] * (b - a), "labels": int(enc.labels[i])}
        if self.split == "train":
            item["index"] = int(i)
        return item
