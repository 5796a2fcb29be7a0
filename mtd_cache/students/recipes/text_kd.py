"""Text KD: any Hugging Face sequence classifier (``--student hf:NAME_OR_PATH``) from the mean of k teachers' logits.

Loss per batch (``students/objective.py``; Hinton et al. 2015):

    L = alpha_ce * CE(z_S, y) + alpha_kd * L_KD^k(z_S, mean_i z_Ti; t) [+ alpha_hidden * L_hid(W h_S, h_P)]

* ``L_KD^k``: ``losses.kd_loss`` ("kl", "sum_t2": HF distiller.py's ``KLDivLoss(batchmean) * T**2``).
* ``L_hid`` (off by default, ``alpha_hidden`` > 0 turns it on and makes ``--primary`` required): the student's
  last hidden state against the primary teacher's last one, stored in the store, on non-padding tokens:
  TinyBERT's MSE (``hidden_loss`` "mse") or DistilBERT's 1 - cosine ("cosine"). When the widths differ a
  learnable linear map ``W`` (student width -> teacher width, TinyBERT's ``fit_dense``) trains with the
  student; at equal widths ``W`` is the identity.
* The CE-only baseline (no teachers) trains with ``alpha_ce * CE`` alone.

The student is the checkpoint as named (its head initialised for the task's labels when it has none), or a
shallower cut of it: ``student_layers`` keeps evenly spaced layers, first and last included (DistilBERT's
extract_distilbert.py choice). It must tokenise as the store's inputs were tokenised (refused otherwise): the
targets belong to those tokens. The optimiser is BERT's fine-tuning recipe (AdamW, linear warm-up and decay).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ...core.errors import MtdError
from ...core.fit import Fit
from ...core.settings import setting
from ...models import bert, factory
from ...tasks.registry import task_of_store
from .. import objective
from ..context import StudentContext
from .settings import TextStudentSettings
from .text import check_vocabulary, text_fit, text_inputs

log = logging.getLogger(__name__)
MODALITY = "text"
HIDDEN_LOSSES = ("mse", "cosine")


WEIGHTS = objective.weights("TextKD", reads={objective.LOGITS, objective.HIDDEN}, own={
    "ce": (1.0, "hard-label CE weight: the paper's L_CE + L_KD^k (+ the recipe's terms), unweighted"),
    "kd": (1.0, "HF's pre-training recipe weighs KD 5.0 / MLM 2.0 / cos 1.0"),
    "hidden": (0.0, "hidden-state loss on the primary's last layer: off by default")})


@dataclass(frozen=True)
class Settings(WEIGHTS, TextStudentSettings):
    """BERT's fine-tuning recipe (HF run_glue README, TinyBERT task_distill.py) with Hinton's KD."""

    hidden_loss: str = setting("mse", "mse: TinyBERT's (through W when the widths differ); cosine: DistilBERT's",
                               choices=HIDDEN_LOSSES)
    student_layers: int | None = setting(None, "None: every layer of the checkpoint; N: N evenly spaced ones, "
                                               "first and last included", low=1)


def needs_primary(settings: Settings) -> bool:
    """Only a hidden-state term (``alpha_hidden``, ``alpha_cos``) reads a primary teacher's states."""
    return objective.reads_states(settings)


def build(ctx: StudentContext) -> Fit:
    """Model, optimiser, batches and loss of one text-KD run (``text.text_fit``)."""
    tok, inputs = text_inputs(ctx)
    net = _student(ctx, tok)
    hidden = objective.Objective.of(ctx.settings, None, bool(ctx.teachers)).needs(objective.HIDDEN)
    ctx.extra["hidden_loss"] = ctx.settings.hidden_loss if hidden else None
    return text_fit(ctx, net, inputs, f"{factory.slug(ctx.student)} k={len(ctx.teachers)}", wrap=True, project=True)


def _student(ctx: StudentContext, tok: Any) -> torch.nn.Module:
    s, store = ctx.settings, ctx.store
    net = factory.build(ctx.student, task_of_store(store), hint="give a local folder: --student hf:PATH")
    depth = bert.num_layers(net)
    layers = None
    if s.student_layers is not None and s.student_layers != depth:
        if s.student_layers > depth:
            raise MtdError(f"student_layers {s.student_layers}: {ctx.student} has only {depth} layers")
        layers = bert.evenly_spaced_layers(depth, s.student_layers)
        bert.keep_layers(net, layers)
    _check_tokenizer(ctx, tok)
    check_vocabulary(net, tok)
    ctx.extra.update(init=ctx.student, init_layers=layers, init_depth=depth)
    return net


def _check_tokenizer(ctx: StudentContext, tok: Any) -> None:
    """A checkpoint that comes with a tokenizer must tokenise as the store's inputs were (its ids index its
    embeddings); one without is held to the vocabulary size only."""
    ref = factory.hf_ref(ctx.student)
    try:
        own = bert.load_tokenizer(ref)
    except MtdError:
        log.info("%s has no tokenizer of its own: it reads the store's (%s)", ctx.student, tok.name_or_path)
        return
    mine, theirs = bert.tokenizer_identity(own), bert.tokenizer_identity(tok)
    if mine["sha256"] != theirs["sha256"]:
        raise MtdError(f"tokenizer mismatch: the student {ctx.student} tokenises with its own tokenizer (sha256 "
                       f"{mine['sha256'][:12]}), the store's inputs with {theirs['name']!r} (sha256 "
                       f"{theirs['sha256'][:12]}): distil a student of the teachers' tokenizer")
