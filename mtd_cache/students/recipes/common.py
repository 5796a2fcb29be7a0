"""What the student recipes share: their settings' base; the text students' data, vocabulary check, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import MtdError
from ...models import bert
from ...models.inference import evaluate_split
from ...settings import Settings
from ...tasks.registry import task_of_store
from ...tasks.text_data import Encoded, TaskInputs
from ..context import StudentContext
from ..data import store_inputs


@dataclass(frozen=True)
class StudentSettings(Settings):
    WHAT = "student"
    UNKNOWN = "unknown setting {key!r} for this student"


def text_inputs(ctx: StudentContext) -> tuple[Any, TaskInputs]:
    """The task tokenised as the store's inputs were, or refused (tokenizer / max length named)."""
    s = ctx.settings
    tok, inputs = store_inputs(ctx.store, s.tokenizer, s.max_length, ctx.data_dir)
    ctx.extra.update(tokenizer=bert.tokenizer_identity(tok), max_length=inputs.max_length)
    return tok, inputs


def check_vocabulary(net: torch.nn.Module, tok: Any) -> None:
    if net.config.vocab_size < len(tok):
        raise MtdError(f"the student's vocabulary has {net.config.vocab_size} entries, the tokenizer "
                       f"{len(tok)}: they do not belong together")


def text_evaluator(ctx: StudentContext, net: torch.nn.Module, dev_set: Encoded,
                   dtype: torch.dtype | None) -> Callable[[], dict[str, float]]:
    """The dev metrics of ``net`` (the primary one as ``metric``) and its predictions, as the recipe's ``evaluate``."""
    def evaluate() -> dict[str, Any]:
        metrics, logits = evaluate_split(task_of_store(ctx.store), net, dev_set, ctx.settings.eval_batch_size,
                                         ctx.device, dtype)
        return {**metrics, "predictions": logits.argmax(-1), "labels": dev_set.labels}
    return evaluate
