"""Inference: a model over a split, in batches, as teachers (dump, dev scores) and students (evaluation) run it.

Text: length-sorted batches (little padding), logits and, for a primary teacher, its states in the
store's unpadded layout. Images: the unaugmented split, or every image under every view (the dump).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..tasks.glue import compute_metrics, get_glue_task
from ..tasks.image_data import ImageData
from ..tasks.text_data import Encoded, collate, sorted_batches
from . import bert

# ----------------------------------------------------------------------------- text


def run_model(model: torch.nn.Module, enc: Encoded, index: np.ndarray, batch_size: int, device: torch.device,
              dtype: torch.dtype | None = None, hidden_layers: Sequence[int] = (),
              attn_layers: Sequence[int] = (), pad_to: int | None = None,
              progress: Callable[[int], Any] | None = None) -> bert.Outputs:
    """Forward the examples ``index`` in length-sorted batches; logits (and states) in ``index`` order.

    ``pad_to`` pads every batch to a fixed length instead (the benchmark's baseline).
    """
    index = np.asarray(index, dtype=np.int64)
    batches = ((pos, collate(enc, index[pos], pad_to=pad_to)) for pos in sorted_batches(enc.lengths[index], batch_size))
    return bert.run_batches(model, batches, len(index), device, dtype, hidden_layers, attn_layers, progress)


def evaluate_split(task: str, model: torch.nn.Module, enc: Encoded, batch_size: int, device: torch.device,
                   dtype: torch.dtype | None = None) -> tuple[dict[str, float], np.ndarray]:
    """``({"metric": primary, **all metrics}, logits)`` on a labelled split."""
    logits = run_model(model, enc, np.arange(len(enc)), batch_size, device, dtype).logits
    metrics = compute_metrics(task, logits, enc.labels)
    return {"metric": metrics[get_glue_task(task).metric], **metrics}, logits


# ----------------------------------------------------------------------------- images


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageData, batch_size: int = 1000) -> float:
    return float((predict(model, data, batch_size).argmax(1) == data.labels.cpu()).float().mean())


@torch.no_grad()
def image_metrics(model: torch.nn.Module, data: ImageData, batch_size: int = 1000) -> dict[str, Any]:
    """``{"metric": accuracy, "predictions": class ids, "labels"}`` on the unaugmented split (a student's test)."""
    pred, labels = predict(model, data, batch_size).argmax(1), data.labels.cpu()
    return {"metric": float((pred == labels).float().mean()), "predictions": pred.numpy(), "labels": labels.numpy()}


@torch.no_grad()
def predict(model: torch.nn.Module, data: ImageData, batch_size: int = 1000) -> torch.Tensor:
    """Logits of the unaugmented split, (N, C) float32 on the CPU."""
    was = model.training
    model.eval()
    device = data.labels.device
    out = [model(data.batch(torch.arange(i, min(len(data), i + batch_size), device=device), None)).float().cpu()
           for i in range(0, len(data), batch_size)]
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def view_logits(model: torch.nn.Module, data: ImageData, idx: torch.Tensor, views: torch.Tensor,
                batch_size: int) -> np.ndarray:
    """(len(idx), V, C) logits of each image under each view: images x views, flattened into batches."""
    n, v = len(idx), len(views)
    pairs_i = idx.repeat_interleave(v)
    pairs_v = views.repeat(n, 1)
    out = [model(data.batch(pairs_i[s:s + batch_size], pairs_v[s:s + batch_size])).float().cpu()
           for s in range(0, n * v, batch_size)]
    return torch.cat(out).reshape(n, v, -1).numpy()
