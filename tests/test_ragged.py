"""Padding flat teacher states on the device: against a naive per-example reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtd_cache.core.ragged import length_mask, pad_attention, pad_hidden, unpad_attention, unpad_hidden


def naive_pad_hidden(flat: np.ndarray, lengths: list[int], layers: int) -> np.ndarray:
    lmax, out, pos = max(lengths), [], 0
    for n in lengths:
        block = flat[pos:pos + layers * n].reshape(layers, n, -1)
        pos += layers * n
        padded = np.zeros((layers, lmax, flat.shape[1]), flat.dtype)
        padded[:, :n] = block
        out.append(padded)
    return np.stack(out)


def naive_pad_attention(flat: np.ndarray, lengths: list[int], layers: int, heads: int) -> np.ndarray:
    lmax, out, pos = max(lengths), [], 0
    for n in lengths:
        block = flat[pos:pos + layers * heads * n * n].reshape(layers, heads, n, n)
        pos += layers * heads * n * n
        padded = np.zeros((layers, heads, lmax, lmax), flat.dtype)
        padded[:, :, :n, :n] = block
        out.append(padded)
    return np.stack(out)


@pytest.mark.parametrize("layers", [1, 3])
def test_pad_hidden_matches_naive_and_round_trips(layers):
    rng = np.random.default_rng(0)
    lengths = [5, 1, 9, 3, 9]
    flat = rng.standard_normal((sum(lengths) * layers, 4)).astype(np.float16)
    got = pad_hidden(torch.from_numpy(flat), torch.tensor(lengths), layers)
    assert got.shape == (5, layers, 9, 4) and got.dtype == torch.float16
    np.testing.assert_array_equal(got.numpy(), naive_pad_hidden(flat, lengths, layers))
    np.testing.assert_array_equal(unpad_hidden(got, torch.tensor(lengths)).numpy(), flat)


def test_pad_hidden_further_than_longest():
    flat = torch.arange(6.0).view(3, 2)
    got = pad_hidden(flat, torch.tensor([2, 1]), 1, max_length=4)
    assert got.shape == (2, 1, 4, 2)
    assert got[0, 0, :2].tolist() == [[0, 1], [2, 3]] and got[1, 0, 0].tolist() == [4, 5]
    assert got[:, :, 2:].abs().sum() == 0


@pytest.mark.parametrize("layers,heads", [(1, 1), (2, 3)])
def test_pad_attention_matches_naive_and_round_trips(layers, heads):
    rng = np.random.default_rng(1)
    lengths = [4, 2, 7]
    flat = rng.standard_normal(sum(n * n for n in lengths) * layers * heads).astype(np.float32)
    got = pad_attention(torch.from_numpy(flat), torch.tensor(lengths), layers, heads)
    assert got.shape == (3, layers, heads, 7, 7)
    np.testing.assert_array_equal(got.numpy(), naive_pad_attention(flat, lengths, layers, heads))
    np.testing.assert_array_equal(unpad_attention(got, torch.tensor(lengths)).numpy(), flat)


def test_pad_attention_fill_value():
    got = pad_attention(torch.ones(1 + 4), torch.tensor([1, 2]), 1, 1, fill=-7.0)
    assert got[0, 0, 0].tolist() == [[1, -7], [-7, -7]]


def test_length_mask():
    m = length_mask(torch.tensor([2, 0, 3]), 4)
    assert m.tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False]]
    assert length_mask(torch.tensor([1, 3])).shape == (2, 3)


def test_wrong_total_is_refused():
    with pytest.raises(ValueError, match="hidden has 5 entries.*6"):
        pad_hidden(torch.zeros(5, 2), torch.tensor([2, 1]), 2)
    with pytest.raises(ValueError, match="attention has 4 entries.*5"):
        pad_attention(torch.zeros(4), torch.tensor([2, 1]), 1, 1)
