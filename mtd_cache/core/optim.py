"""The optimiser recipes: He et al.'s SGD for the CIFAR ResNets, BERT's AdamW for the BERT family.

Shared by teachers and students: a student trains with its family's recipe, as the teachers did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .errors import MtdError
from .settings import Settings, setting

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


@dataclass(frozen=True)
class SgdRecipeSettings(Settings):
    """He et al.'s CIFAR recipe (akamaster/pytorch_resnet_cifar10 ``trainer.py``), as ``sgd_recipe`` reads it:
    the image teachers' and the image students' (each adds its own ``warmup_iters``)."""

    epochs: int = setting(200, "trainer.py --epochs 200", low=1)
    lr: float = setting(0.1, "trainer.py --lr 0.1", above=0)
    momentum: float = setting(0.9, "trainer.py --momentum 0.9", low=0, below=1)
    weight_decay: float = setting(1e-4, "trainer.py --weight-decay 1e-4", low=0)
    batch_size: int = setting(128, "trainer.py --batch-size 128", low=1)
    milestones: list[float] = setting([0.5, 0.75], "lr / 10 at these fractions of the epochs: 100 and 150 of 200")
    warmup_lr: float = setting(0.01, "ResNet-110's warm-up lr (trainer.py)", above=0)
    legacy_warmup: bool = setting(False, "reproduce trainer.py's warm-up that never restores lr 0.1")

    def check(self) -> None:
        super().check()
        m = list(self.milestones)
        if not all(0 < f <= 1 for f in m) or any(b <= a for a, b in zip(m, m[1:], strict=False)):
            raise MtdError(f"{self.WHAT} setting milestones={m}: fractions of the epochs in (0, 1], ascending "
                           "(the default: [0.5, 0.75])")


def optimizer_and_schedule(model: torch.nn.Module, lr: float, weight_decay: float, warmup: float,
                           total_steps: int, schedule: str = "linear") -> tuple[torch.optim.Optimizer, Any]:
    """AdamW and a per-step schedule: linear warm-up over ``warmup`` of the steps, then linear decay to 0
    (``schedule="linear"``) or along a half cosine (``"cosine"``: language models), or a constant lr
    (``"constant"``: TinyBERT's stage 1, BertAdam's schedule "none").

    Weight decay spares biases and LayerNorm weights (TinyBERT task_distill.py's
    groups: 0.01 / 0.0 on ``bias``, ``LayerNorm``; HF distiller.py's ``no_decay``).
    Warm-up as a fraction of all steps: BERT's and TinyBERT's ``warmup_proportion``;
    the schedule is ``transformers.get_linear_schedule_with_warmup``.
    """
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=float(lr))
    if schedule == "constant":
        return optimizer, None
    if schedule not in ("linear", "cosine"):
        raise MtdError(f"unknown schedule {schedule!r}; valid: linear, cosine, constant")
    warmup_steps = math.ceil(float(warmup) * total_steps)
    if schedule == "cosine":
        from transformers import get_cosine_schedule_with_warmup

        return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))


def lr_factor(step: int, steps_per_epoch: int, milestones: list[int], warmup_iters: int, warmup_factor: float,
              legacy: bool) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (steps counted from 0)."""
    decay = 0.1 ** sum(step // steps_per_epoch >= m for m in milestones)
    if legacy and warmup_iters:
        return warmup_factor * decay  # the reference: set to 0.01 once, never restored
    return warmup_factor if step < warmup_iters else decay


def sgd_recipe(model: torch.nn.Module, s: Any, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with momentum and weight decay, and the per-step schedule of ``lr_factor``.

    ``s``: settings with ``lr``, ``momentum``, ``weight_decay``, ``epochs``, ``milestones`` (fractions of
    the epochs), ``warmup_iters``, ``warmup_lr`` and ``legacy_warmup`` (the image teachers' and students').
    """
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    milestones = [round(f * s.epochs) for f in s.milestones]
    warm = s.warmup_iters or 0
    factor = s.warmup_lr / s.lr
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, steps_per_epoch, milestones, warm, factor, s.legacy_warmup))
    return opt, sched
