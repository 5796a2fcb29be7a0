"""What the student recipes share: their settings' base; the text students' data, vocabulary check, evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import MtdError
from ...losses import KD_DIVERGENCES, KD_RULES, KD_SCALES, multi_teacher_kd
from ...models import bert
from ...models.inference import evaluate_split
from ...runtime import PRECISIONS
from ...settings import Settings, setting
from ...tasks.registry import task_of_store
from ...tasks.text_data import Encoded, TaskInputs
from ..context import StudentContext
from ..data import store_inputs


@dataclass(frozen=True)
class StudentSettings(Settings):
    """What every student shares: how the k teachers' outputs make one KD target (``losses.multi_teacher_kd``).

    Both enter a run's id and experiment only when changed (``since``): the paper's runs keep their ids.
    """

    WHAT = "student"
    UNKNOWN = "unknown setting {key!r} for this student"

    kd_rule: str = setting("mean_logits", "the paper's eq. 9: the mean of the teachers' logits", choices=KD_RULES,
                           since="0.2")
    teacher_weights: list[float] | None = setting(None, "None: equal; else one weight >= 0 per store teacher, "
                                                        "normalised over the chosen ones", since="0.2")
    teacher_dropout: bool = setting(False, "--online only: the teachers' dropout on, as TinyBERT's reference "
                                           "(never calls teacher.eval()); a store holds a deterministic function "
                                           "of the input", since="0.2")

    def check(self) -> None:
        super().check()
        w = self.teacher_weights
        if w is not None and (not w or not all(math.isfinite(x) and x >= 0 for x in w) or not sum(w) > 0):
            raise MtdError(f"student setting teacher_weights={w}: one finite weight >= 0 per store teacher, "
                           "not all 0")


@dataclass(frozen=True)
class TextStudentSettings(StudentSettings):
    """BERT's fine-tuning recipe (HF run_glue README, TinyBERT task_distill.py) with Hinton's KD, as the
    DistilBERT and text-KD students share it."""

    lr: float = setting(5e-5, "peak AdamW lr: TinyBERT task_distill.py --learning_rate default; HF TrainingArguments",
                        above=0)
    epochs: int = setting(3, "run_glue README recipe and TinyBERT's --num_train_epochs default", low=1)
    batch_size: int = setting(32, "run_glue README and TinyBERT --train_batch_size", low=1)
    warmup: float = setting(0.1, "linear warm-up fraction: TinyBERT --warmup_proportion", low=0, high=1)
    weight_decay: float = setting(0.01, "none on bias/LayerNorm: TinyBERT's BertAdam groups", low=0)
    grad_clip: float = setting(1.0, "BertAdam max_grad_norm; HF TrainingArguments max_grad_norm (0: none)", low=0)
    temperature: float = setting(2.0, "HF distillation train.py --temperature default", above=0)
    alpha_ce: float = setting(1.0, "hard-label CE weight: DESIGN.md's L_CE + L_KD^k (+ the recipe's terms), "
                                   "unweighted", low=0)
    alpha_kd: float = setting(1.0, "HF's pre-training recipe weighs KD 5.0 / MLM 2.0 / cos 1.0", low=0)
    kd_scale: str = setting("sum_t2", "distiller.py's KLDivLoss(batchmean) * T**2", choices=KD_SCALES)
    divergence: str = setting("kl", "as distiller.py's KLDivLoss (same gradients as ce)", choices=KD_DIVERGENCES)
    tokenizer: str | None = setting(None, "None: the store's (saved with the teachers); another must tokenise "
                                          "identically")
    max_length: int | None = setting(None, "None: the store's; another is refused (other inputs)", low=2)
    precision: str = setting("auto", "bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    eval_batch_size: int = setting(128, "dev inference batch", low=1)
    eval_every: int = setting(1, "dev metrics every N epochs (0: after the last only)", low=0)
    prefetch: int = setting(3, "batches read from the store ahead, in a thread", low=0)


def check_init_teacher(settings: Any, num_teachers: int) -> None:
    """``init_teacher`` (DistilBERT, TinyBERT: the teacher whose layers a student starts from) is a store teacher."""
    t = getattr(settings, "init_teacher", None)
    if t is not None and not 0 <= t < num_teachers:
        raise MtdError(f"init_teacher {t} is out of range: the store has {num_teachers} teachers "
                       f"(0-{num_teachers - 1})")


def chosen_weights(settings: Any, teachers: tuple[int, ...], num_teachers: int) -> list[float] | None:
    """The weights of the chosen teachers (ascending order) from ``teacher_weights``, or None (equal weights);
    refused when the list does not have one weight per store teacher or the chosen ones weigh nothing."""
    w = getattr(settings, "teacher_weights", None)
    if w is None or not teachers:
        return None
    if len(w) != num_teachers:
        raise MtdError(f"teacher_weights has {len(w)} weights; the store has {num_teachers} teachers (one weight "
                       "per store teacher, normalised over the chosen ones)")
    chosen = [float(w[t]) for t in sorted(teachers)]
    if not sum(chosen) > 0:
        raise MtdError(f"teacher_weights gives the chosen teachers {sorted(teachers)} weight 0")
    return chosen


def kd_term(ctx: StudentContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The recipe's KD^k: student logits and the targets' teacher logits -> loss, by the run's rule and weights."""
    s = ctx.settings
    weights = chosen_weights(s, ctx.teachers, ctx.store.num_teachers)
    rule = s.kd_rule

    def kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        # "mean_logits" targets arrive combined (weighted by the store's gather); the others per teacher
        return multi_teacher_kd(student, teacher, s.temperature, s.kd_scale, s.divergence, rule,
                                None if rule == "mean_logits" else weights)
    return kd


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
