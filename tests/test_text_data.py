"""tasks/text_data.py: tokenising, batching, the tokenizer's identity (tiny tokenizers, offline)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from factories import (
    make_tokenizer,
    mrpc_texts,
    needs_glue,
    write_mrpc_slice,
)

from mtd_cache.core.errors import MtdError
from mtd_cache.core.runtime import autocast_dtype
from mtd_cache.models import bert
from mtd_cache.tasks import text_data
from mtd_cache.tasks.glue import read_split
from mtd_cache.teachers.text import TextDumpSettings


@needs_glue
def test_encode_and_collate_match_the_tokenizer(tmp_path):
    data = write_mrpc_slice(tmp_path / "glue", 20, 4)
    tok = make_tokenizer(tmp_path / "tok", mrpc_texts(data))
    split = read_split("mrpc", "train", data)
    enc = text_data.encode(tok, split, max_length=24)
    assert len(enc) == 20 and enc.lengths.max() <= 24 and enc.ids.dtype == np.int32
    idx = [3, 0, 7]
    ref = tok([split.text_a[i] for i in idx], [split.text_b[i] for i in idx], truncation=True, max_length=24,
              padding="longest", return_tensors="pt")
    got = text_data.collate(enc, idx)
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(got[k], ref[k]), k
    assert got["labels"].tolist() == split.labels[idx].tolist() and got["index"].tolist() == idx
    assert text_data.collate(enc, idx, pad_to=30)["input_ids"].shape == (3, 30)


def test_bucket_batches_cover_everything_once_in_a_seeded_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 100, size=1000)
    a = text_data.bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    b = text_data.bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    c = text_data.bucket_batches(lengths, 32, torch.Generator().manual_seed(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert len(a) == 32 and sum(len(x) < 32 for x in a) == 1  # ceil(1000/32); one partial batch, kept
    padded = sum(len(x) * lengths[x].max() for x in a)
    assert padded < 1.1 * lengths.sum()  # little padding (random batches: ~1.9x)


def test_tokenizer_identity_is_content_not_location(tmp_path):
    tok = make_tokenizer(tmp_path / "a", ["one two"])
    again = bert.load_tokenizer(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = bert.load_tokenizer(tmp_path / "b")
    tok("one two", truncation=True, max_length=3)  # truncation settings are not identity
    other = make_tokenizer(tmp_path / "c", ["one two three"])
    ids = [bert.tokenizer_identity(t) for t in (tok, again, moved, other)]
    assert ids[0]["sha256"] == ids[1]["sha256"] == ids[2]["sha256"] != ids[3]["sha256"]
    assert ids[2]["name"] == str(tmp_path / "b")


def test_unknown_options_are_refused():
    with pytest.raises(MtdError, match="unknown dump setting 'nope'.*batch_size"):
        TextDumpSettings.resolve({"nope": 1, "max_length": None})
    with pytest.raises(MtdError, match="unknown precision 'fp8'"):
        autocast_dtype("fp8", torch.device("cpu"))
    assert autocast_dtype("auto", torch.device("cpu")) == (None, "fp32")
