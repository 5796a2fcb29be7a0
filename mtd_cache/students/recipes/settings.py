"""The student recipes' settings bases: what every student shares (how k teachers make one KD target), and BERT's
fine-tuning recipe the text students share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...core.errors import MtdError
from ...core.losses import BASE_RULES, KD_DIVERGENCES, KD_RULES, KD_SCALES
from ...core.runtime import PRECISIONS
from ...core.settings import Settings, setting
from ...core.weighing import NO_PRIOR_RULES


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
    subset_size: int | None = setting(None, "kd_rule=random_subset: j teachers of the chosen k drawn afresh at every "
                                            "step (all k when j >= k)", low=1, since="0.4")
    subset_rule: str = setting("mean_logits", "kd_rule=random_subset: how the j drawn teachers combine",
                               choices=BASE_RULES, since="0.4")
    jsd_beta: float = setting(0.5, "divergence=jsd: GKD's beta (0: forward KL, 1: reverse KL)", low=0, high=1,
                              since="0.4")
    skew_alpha: float = setting(0.1, "divergence=skew_kl/skew_rkl: DistiLLM's alpha (its default 0.1)", low=0,
                                high=1, since="0.4")
    taid_start: float = setting(0.4, "divergence=taid: the interpolation's start (TAID's default)", low=0, below=1,
                                since="0.4")
    taid_end: float = setting(1.0, "divergence=taid: its end (TAID's default)", above=0, high=1, since="0.4")
    taid_alpha: float = setting(5e-4, "divergence=taid: its adaptive step size (TAID's default)", low=0, high=1,
                                since="0.4")
    taid_beta: float = setting(0.99, "divergence=taid: the momentum of the loss's relative change (TAID's "
                                     "default)", low=0, below=1, since="0.4")

    def check(self) -> None:
        super().check()
        w = self.teacher_weights
        if w is not None and (not w or not all(math.isfinite(x) and x >= 0 for x in w) or not sum(w) > 0):
            raise MtdError(f"student setting teacher_weights={w}: one finite weight >= 0 per store teacher, "
                           "not all 0")
        if (self.kd_rule == "random_subset") != (self.subset_size is not None):
            raise MtdError("kd_rule=random_subset needs subset_size=J (the teachers drawn per step)"
                           if self.subset_size is None else
                           f"subset_size={self.subset_size} is for kd_rule=random_subset, not {self.kd_rule}")
        rule = self.subset_rule if self.kd_rule == "random_subset" else self.kd_rule
        if w is not None and rule in NO_PRIOR_RULES:
            raise MtdError(f"teacher_weights with kd_rule {rule}: a static prior has no meaning there (it "
                           f"{'picks one teacher per example' if rule == 'min_ce' else 'solves for its own weights'}"
                           "): leave teacher_weights unset")
        if self.taid_start >= self.taid_end:
            raise MtdError(f"taid_start={self.taid_start} must be below taid_end={self.taid_end}")


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
