"""The intermediate-state losses of DistilBERT and TinyBERT, and TinyBERT's layer map: pure functions on tensors.

Hidden states (B, L, H) and pre-softmax attention scores (B, h, L, L) of a student against a primary teacher's,
over the valid tokens of a (B, L) mask; every teacher-side input is detached (``losses._student_teacher``), half
precision computed in float32. Their sources, and the scale conventions of the recipes that weigh them, are in
``losses``'s docstring.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F

from .errors import MtdError
from .losses import _student_teacher

# TinyBERT adds -10000 to masked attention scores; anything at or below this is "masked".
ATTENTION_THRESHOLD: float = -100.0


def _token_mask(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """A (B, L) bool mask of valid tokens, from bool or 0/1 input."""
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"mask shape {tuple(mask.shape)} != (B, L) = {(batch, length)}")
    mask = mask.bool()
    if not bool(mask.any()):
        raise ValueError("mask selects no tokens")
    return mask


def hidden_mse(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """TinyBERT hidden-state loss for one layer: MSE(student W_h, teacher).

    The student's states must already be projected to the teacher's width (the
    reference's one shared learnable ``fit_dense``). mask None: mean over every entry,
    pad positions included (TinyBERT task_distill.py, ``loss_mse = MSELoss()``).
    mask (B, L), bool or 0/1: valid tokens only,
    sum over valid tokens of ||s - t||^2 / (n_valid * H).
    The caller sums this over the mapped layers (see ``tinybert_layer_map``).

    Shapes: student_hidden, teacher_hidden (B, L, H). Returns a scalar.
    """
    student, teacher = _student_teacher(student_hidden, teacher_hidden)
    if mask is None:
        return F.mse_loss(student, teacher)
    valid = _token_mask(mask, student.shape[0], student.shape[1])
    # Indexing (not multiplying by the mask) keeps NaN/Inf padding out of the gradient.
    return F.mse_loss(student[valid], teacher[valid])


def attention_mse(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    threshold: float = ATTENTION_THRESHOLD,
) -> torch.Tensor:
    """TinyBERT attention loss for one layer: MSE of pre-softmax attention scores.

    Entries <= threshold are set to 0 in both tensors first: the reference adds -10000
    to masked keys, and ``torch.where(att <= -1e2, 0, att)`` (task_distill.py) removes
    them. mask None: mean over every entry (the reference: padded query rows still
    count). mask (B, L): only pairs (i, j) with both tokens valid,
    sum / (h * sum_b n_b^2), n_b = valid tokens of example b.
    Student and teacher must have the same number of heads, as in the reference.

    Shapes: student_scores, teacher_scores (B, h, L, L). Returns a scalar.
    """
    student, teacher = _student_teacher(student_scores, teacher_scores)
    student = torch.where(student <= threshold, torch.zeros_like(student), student)
    teacher = torch.where(teacher <= threshold, torch.zeros_like(teacher), teacher)
    if mask is None:
        return F.mse_loss(student, teacher)
    valid = _token_mask(mask, student.shape[0], student.shape[-1])
    pairs = (valid[:, :, None] & valid[:, None, :])[:, None].expand_as(student)
    return F.mse_loss(student[pairs], teacher[pairs])


def cosine_hidden_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """DistilBERT's cosine loss: mean over non-padding tokens of 1 - cos(s, t).

    Equals HF distiller.py's ``CosineEmbeddingLoss(reduction="mean")`` with target 1 on
    the ``masked_select``-ed last hidden states (up to its 1e-12 / 1e-8 norm epsilons).

    Shapes: student_hidden, teacher_hidden (B, L, H) (same H); mask (B, L), bool or
    0/1, true for real tokens. Returns a scalar.
    """
    student, teacher = _student_teacher(student_hidden, teacher_hidden)
    valid = _token_mask(mask, student.shape[0], student.shape[1])
    return (1.0 - F.cosine_similarity(student[valid], teacher[valid], dim=-1)).mean()


def _check_layer_map(layer_map: Sequence[int], teacher_layers: int, student_layers: int) -> None:
    layers = list(layer_map)
    ok = (
        len(layers) == student_layers + 1
        and all(isinstance(g, numbers.Integral) for g in layers)
        and layers[0] == 0
        and all(a < b for a, b in pairwise(layers))
        and layers[-1] <= teacher_layers
    )
    if not ok:
        raise MtdError(
            f"bad layer map {layers} for a {teacher_layers}-layer teacher and "
            f"{student_layers}-layer student: need {student_layers + 1} increasing "
            f"integers from 0 (embeddings) up to at most {teacher_layers}"
        )


def tinybert_layer_map(
    teacher_layers: int, student_layers: int, layer_map: Sequence[int] | None = None
) -> list[int]:
    """TinyBERT's layer map g: student layer k -> teacher layer g(k), k = 0..L_S.

    Index 0 is the embedding output, k >= 1 the output of transformer layer k, i.e. the
    index into a hidden-state list of length L + 1 (HF ``hidden_states``, the
    reference's ``teacher_reps``). Default g(k) = k * L_T / L_S (the reference's
    ``teacher_reps[i * layers_per_block]``), e.g. 12 -> 4: [0, 3, 6, 9, 12]. Raises
    MtdError when L_T is not a multiple of L_S and no map is given, or when a given
    map is not L_S + 1 increasing integers starting at 0 and within 0..L_T.
    """
    if teacher_layers < 1 or student_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got {teacher_layers}, {student_layers}")
    if layer_map is not None:
        _check_layer_map(layer_map, teacher_layers, student_layers)
        return [int(g) for g in layer_map]
    if teacher_layers % student_layers:
        example = ",".join(str(int(k * teacher_layers / student_layers + 0.5)) for k in range(student_layers + 1))
        raise MtdError(
            f"teacher layers {teacher_layers} is not a multiple of student layers {student_layers}: give a "
            f"layer map g(0..{student_layers}), e.g. --set layer_map={example} (the dump: --set layer_map=... "
            f"with --student-layers {student_layers}), or --set student_layers=N with N dividing {teacher_layers}"
        )
    ratio = teacher_layers // student_layers
    return [k * ratio for k in range(student_layers + 1)]


def attention_layer_map(
    teacher_layers: int, student_layers: int, layer_map: Sequence[int] | None = None
) -> list[int]:
    """Teacher transformer layer (1-based) whose attention student layer m distils.

    Returns [g(1), ..., g(L_S)]: entry m - 1 is the teacher layer for student layer m.
    Layers are 1-based, so a 0-based per-layer attention list (HF ``attentions``, the
    reference's ``teacher_atts``) is indexed ``atts[g - 1]``; the reference's
    ``teacher_atts[i * ratio + ratio - 1]`` is the same: 12 -> 4 gives layers
    [3, 6, 9, 12], indices [2, 5, 8, 11].
    """
    return tinybert_layer_map(teacher_layers, student_layers, layer_map)[1:]
