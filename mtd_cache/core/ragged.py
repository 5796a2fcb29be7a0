"""Padding unpadded teacher states on the training device.

The store keeps a primary teacher's states unpadded (``docs/FORMAT.md``):
example i owns ``layers * L_i`` hidden rows, ordered (layer, position), and
``layers * heads * L_i**2`` attention entries, ordered (layer, head, query, key).
``PrimaryStates.read`` returns a batch as one flat buffer plus the lengths;
these functions turn it into padded tensors with index arithmetic on the
device, one scatter and no Python loop over examples: padding on the CPU costs
more than the read itself (about 14 ms for a (B, 5, Lmax, 768) batch, measured
on a 2-core machine).

>>> b = store.primary(t).read(idx)
>>> flat = torch.from_numpy(b.hidden).to(device, non_blocking=True)
>>> hidden = pad_hidden(flat, torch.from_numpy(b.lengths).to(device), num_layers=1)  # (B, 1, Lmax, H)
"""

from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """(B, Lmax) bool, True at real tokens: position < length (right padding, as BERT tokenizers pad)."""
    lengths = lengths.long()
    if max_length is None:
        max_length = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def _owners(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every flat element: the example that owns it and its offset inside that example."""
    batch = torch.arange(len(counts), device=counts.device)
    owner = torch.repeat_interleave(batch, counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    offset = torch.arange(total, device=counts.device) - starts[owner]
    return owner, offset


def _check_total(name: str, got: int, want: int) -> None:
    if got != want:
        raise ValueError(f"{name} has {got} entries, but the lengths and layers imply {want}")


def pad_hidden(flat: torch.Tensor, lengths: torch.Tensor, num_layers: int,
               max_length: int | None = None) -> torch.Tensor:
    """Flat hidden rows (R, H) -> (B, num_layers, Lmax, H), zeros at the padding.

    Example b owns ``num_layers * lengths[b]`` consecutive rows, layer-major
    (all positions of its first stored layer, then the next layer's). ``max_length``
    defaults to ``lengths.max()`` (one host sync); pass it to pad further.
    """
    lengths = lengths.to(flat.device).long()
    lmax = int(lengths.max()) if max_length is None else int(max_length)
    counts = lengths * num_layers
    _check_total("hidden", flat.shape[0], int(counts.sum()))
    owner, offset = _owners(counts, flat.shape[0])
    length = lengths[owner]
    layer, pos = offset // length, offset % length
    target = (owner * num_layers + layer) * lmax + pos
    out = flat.new_zeros(len(lengths) * num_layers * lmax, flat.shape[-1])
    out[target] = flat
    return out.view(len(lengths), num_layers, lmax, flat.shape[-1])


def pad_attention(flat: torch.Tensor, lengths: torch.Tensor, num_layers: int, num_heads: int,
                  max_length: int | None = None, fill: float = 0.0) -> torch.Tensor:
    """Flat attention entries (E,) -> (B, num_layers, num_heads, Lmax, Lmax), ``fill`` at the padding.

    Example b owns ``num_layers * num_heads * lengths[b]**2`` consecutive entries,
    each (layer, head) block an (L_b, L_b) matrix in row-major order (query, key).
    ``fill`` 0 matches TinyBERT's zeroing of masked scores (task_distill.py:
    ``torch.where(att <= -1e2, 0, att)``).
    """
    lengths = lengths.to(flat.device).long()
    lmax = int(lengths.max()) if max_length is None else int(max_length)
    blocks = num_layers * num_heads
    counts = lengths * lengths * blocks
    _check_total("attention", flat.shape[0], int(counts.sum()))
    owner, offset = _owners(counts, flat.shape[0])
    length = lengths[owner]
    square = length * length
    block, within = offset // square, offset % square
    row, col = within // length, within % length
    target = ((owner * blocks + block) * lmax + row) * lmax + col
    out = flat.new_full((len(lengths) * blocks * lmax * lmax,), fill)
    out[target] = flat
    return out.view(len(lengths), num_layers, num_heads, lmax, lmax)


def unpad_hidden(padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pad_hidden``: (B, layers, Lmax, H) -> flat (R, H), the store's row order."""
    mask = length_mask(lengths.to(padded.device), padded.shape[2])
    return padded[mask[:, None, :].expand(-1, padded.shape[1], -1)]


def unpad_attention(padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pad_attention``: (B, layers, heads, Lmax, Lmax) -> flat (E,)."""
    mask = length_mask(lengths.to(padded.device), padded.shape[-1])
    pairs = (mask[:, :, None] & mask[:, None, :])[:, None, None]
    return padded[pairs.expand_as(padded)]
