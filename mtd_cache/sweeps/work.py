"""What the paper's steps cost before any of them runs: each step's floating-point work, and a time from a rate.

Nothing exists yet when ``make paper DRY_RUN=1`` plans (no teachers, no stores, maybe no data), so the sweep's
own estimate (``estimate.py``: measured or calibrated runs) has nothing to time. This counts instead:

* **FLOPs of one forward pass** of each model, counted by ``torch.utils.flop_counter`` on the model built on
  PyTorch's meta device (shapes only: no weights, no data, no download): ResNet-110 0.51 GFLOP per 32x32
  image, ResNet-20 0.081, BERT-base 22.3 GFLOP per 128-token sequence.
* **passes**: a training step costs 3 forward passes (forward, and the backward's two); teachers and students
  are scored once per epoch on the evaluation split; the students read cached teachers (no teacher pass).
* **examples** from the task's row (its split sizes, TinyBERT's augmentation rounds), **epochs** and
  **views** from the recipes' own defaults (or the protocol's ``--epochs``), **runs** from the sweep's plan.

Text is counted at the full 128 tokens per example, and TinyBERT's augmentation as one masked-LM pass per
token of every training example with every round's row kept: upper bounds (GLUE sentences are shorter, and
repeated rows are dropped). Time is FLOPs over a rate: ``--tflops`` (the sustained training rate of the
machine that will run it), else this machine's dense matrix-multiply rate, measured in about a second, times
``UTILISATION`` (training reaches a fraction of the peak matmul rate). Both are stated in every line.
"""

from __future__ import annotations

import functools
import time

from ..core.progress import duration

UTILISATION = 0.4  # a training loop's share of the dense matmul rate (an assumption, stated where it is used)
TOKENS = 128  # GLUE's max_length: the text counts are upper bounds
TRAIN_PASSES = 3  # a training step: forward, and a backward of about twice its cost


@functools.cache
def forward_flops(model: str) -> float:
    """FLOPs of one forward pass of ``model`` on one example (an image, or a sequence of ``TOKENS`` tokens):
    a CIFAR ResNet by name, the paper's students by theirs (``distilbert``, ``tinybert``), ``bert-base`` and
    ``bert-base-mlm`` (its masked-LM head, for TinyBERT's augmentation)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        if model.startswith("resnet"):
            from ..models.resnet_cifar import build_resnet

            net, x = build_resnet(model, 3, 10), {"x": torch.empty(1, 3, 32, 32)}
        else:
            from transformers import (
                BertConfig,
                BertForMaskedLM,
                BertForSequenceClassification,
                DistilBertConfig,
                DistilBertForSequenceClassification,
            )

            if model == "bert-base-mlm":  # TinyBERT's augmentation: BERT-base with its masked-LM head
                net = BertForMaskedLM(BertConfig())
            elif model == "distilbert":
                net = DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
            else:  # BERT-base, or TinyBERT-4L-312 (Jiao et al. 2020's general distillation config)
                cfg = BertConfig(num_labels=2) if model == "bert-base" else BertConfig(
                    hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200,
                    num_labels=2)
                net = BertForSequenceClassification(cfg)
            x = {"input_ids": torch.zeros(1, TOKENS, dtype=torch.long)}  # no mask: its checks read values
    with FlopCounterMode(display=False) as counter:
        net(**x) if "input_ids" in x else net(x["x"])
    return float(counter.get_total_flops())


def measured_rate(seconds: float = 1.0) -> tuple[float, str]:
    """This machine's dense matmul rate in FLOP/s (bfloat16 on a GPU, float32 on the CPU), and what it is."""
    import torch

    cuda = torch.cuda.is_available()
    device, dtype, n = ("cuda", torch.bfloat16, 4096) if cuda else ("cpu", torch.float32, 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
        if cuda:
            torch.cuda.synchronize()
    rate = done * 2 * n**3 / (time.perf_counter() - start)
    what = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    return rate, f"{str(dtype).removeprefix('torch.')} matmul on this machine ({what})"


def flops_text(flops: float) -> str:
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= size:
            return f"{flops / size:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def span(seconds: float) -> str:
    """``4m07s``, ``31h20m``; beyond two days, ``17 days``."""
    return f"{seconds / 86400:.0f} days" if seconds >= 2 * 86400 else duration(seconds)


def step_line(flops: float | None, rate: float, bound: bool = False) -> str:
    """``~97.1 PFLOP, ~31h20m``; ``<=`` for an upper bound (text at 128 tokens)."""
    if flops is None:
        return "no estimate"
    about = "<=" if bound else "~"
    return f"{about}{flops_text(flops)}, {about}{span(flops / rate)}"


def rate_of(tflops: float | None) -> tuple[float, str]:
    """The rate the times use, and how it was chosen."""
    if tflops:
        return tflops * 1e12, f"{tflops:g} TFLOP/s (--tflops)"
    peak, what = measured_rate()
    return peak * UTILISATION, f"{peak * UTILISATION / 1e12:.3g} TFLOP/s ({UTILISATION:.0%} of the {what}: " \
                               f"{peak / 1e12:.3g} TFLOP/s; --tflops N for the machine that will run it)"


def training(model: str, examples: float, epochs: int, eval_examples: float = 0) -> float:
    """A model trained ``epochs`` over ``examples`` and scored on ``eval_examples`` after every epoch."""
    return forward_flops(model) * epochs * (TRAIN_PASSES * examples + eval_examples)


def forwards(model: str, examples: float) -> float:
    return forward_flops(model) * examples
