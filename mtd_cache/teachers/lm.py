"""Language-model teachers: a causal LM per seed on a ``"kind": "lm"`` task, gated in perplexity.

A teacher is ``hf:NAME_OR_PATH`` (``models.causal_lm``): a pretrained checkpoint is fine-tuned, a random config
trained from its seeded initialisation. The recipe is the causal-LM one of Hugging Face's ``run_clm.py`` with a
cosine schedule: AdamW (no decay on biases and norms), linear warm-up, cosine decay to 0, gradient clipping,
gradient accumulation (``grad_accum`` micro-batches per optimizer step), checkpointed every epoch (resumable).
The quality gate: a teacher whose dev perplexity is no better than the training tokens' unigram distribution
(add-one smoothed) has learnt nothing of context and is rejected as a constant classifier is.

The dump of language-model teachers writes a token store, not a classification store: ``lm_dump``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.fit import Accumulated, Fit
from ..core.optim import optimizer_and_schedule
from ..core.runtime import PRECISIONS, autocast_dtype, resolve_device, seed_everything
from ..core.safe_files import save_into
from ..core.settings import Settings, setting
from ..models import causal_lm, hub
from ..models.bert import tokenizer_identity
from ..tasks.chance import unigram_reason
from ..tasks.lm import Sequences, unigram_perplexity
from ..tasks.lm_data import epoch_batches, pad, score
from .adapter import TeacherJob

MODEL_HINT = "give a local folder or .gguf file: --model hf:PATH (a folder with config.json alone is a random config)"


@dataclass(frozen=True)
class LmTeacherSettings(Settings):
    """Causal-LM training as Hugging Face's run_clm.py runs it, with a cosine schedule."""

    WHAT = "teacher"
    lr: float = setting(5e-5, "peak AdamW lr: run_clm's default (--learning_rate 5e-5); ~1e-3 from a random config",
                        above=0)
    epochs: int = setting(3, "run_clm's default (--num_train_epochs 3)", low=1)
    batch_size: int = setting(8, "sequences per micro-batch: run_clm's --per_device_train_batch_size 8", low=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step (--gradient_accumulation_steps)", low=1)
    warmup: float = setting(0.05, "fraction of steps, linear warm-up; then cosine decay to 0", low=0, high=1)
    weight_decay: float = setting(0.1, "GPT-3 and nanoGPT's 0.1; none on biases and norms", low=0)
    grad_clip: float = setting(1.0, "max gradient norm (run_clm's --max_grad_norm 1.0; 0: none)", low=0)
    precision: str = setting("auto", "bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    eval_batch_size: int = setting(16, "dev sequences per inference batch (sorted by length)", low=1)
    train_subset: int | None = setting(None, "train on the first N training sequences only (a quick CPU run)", low=1)


def teacher_settings(model: str | None, options: dict[str, Any]) -> LmTeacherSettings:
    if model is None:
        raise MtdError("a language-modelling task's teachers need --model hf:NAME_OR_PATH (a causal LM: a Hub name, "
                       "a folder, a .gguf file, or a folder holding only a config.json to train from scratch)")
    causal_lm.ref_of(model)
    return LmTeacherSettings.resolve(options).settings


def task_data(task: Any, tok: Any, data_dir: str | None, subset: int | None = None) -> tuple[Sequences, Sequences]:
    train, dev = task.sequences(tok, "train", data_dir), task.sequences(tok, "dev", data_dir)
    if subset is not None:
        if subset > len(train):
            raise MtdError(f"train_subset {subset}: {task.name} has {len(train)} training sequences")
        train = train.head(subset)
    return train, dev


def teacher_job(task: Any, seed: int, model: str | None, data_dir: str | None, out: Path, options: dict[str, Any],
                device: str | None) -> TeacherJob:
    """Train one seeded causal-LM teacher; ``save`` writes its weights, config and tokenizer into ``out``."""
    s = teacher_settings(model, options)
    cfg = s.as_dict()
    dev = resolve_device(device)
    dtype, precision = autocast_dtype(s.precision, dev)
    seed_everything(seed)
    tok = causal_lm.load_tokenizer(model, hint=MODEL_HINT)
    train, dev_set = task_data(task, tok, data_dir, s.train_subset)
    net, start = causal_lm.build(model, seed, hint=MODEL_HINT)
    causal_lm.check_fits(net, task.block_size, str(model))
    vocab = causal_lm.vocab_size(net)
    top = int(max(train.ids.max(), dev_set.ids.max()))
    if top >= vocab:
        raise MtdError(f"{model}: the tokenizer gives id {top}, the model has {vocab} output logits")
    net = net.to(dev)
    unigram = unigram_perplexity(train, dev_set, vocab)
    last: dict[str, Any] = {}
    steps_per_epoch = math.ceil(len(train) / (s.batch_size * s.grad_accum))
    optimizer, scheduler = optimizer_and_schedule(net, s.lr, s.weight_decay, s.warmup, s.epochs * steps_per_epoch,
                                                  schedule="cosine")

    def batches(epoch: int) -> list[Accumulated]:
        return epoch_batches(len(train), s.batch_size, s.grad_accum, seed, epoch)

    def step(rows: np.ndarray) -> dict[str, torch.Tensor]:
        ids, mask = pad([train[int(i)] for i in rows])
        ids, mask = ids.to(dev), mask.to(dev)
        labels = ids.masked_fill(~mask, -100)
        return {"loss": net(input_ids=ids, attention_mask=mask.long(), labels=labels).loss}

    def evaluate() -> dict[str, float]:
        last["scores"] = score(net, dev_set, s.eval_batch_size, dev, dtype)
        return last["scores"].metrics()

    tok_id = tokenizer_identity(tok)
    fit = Fit(model=net, optimizer=optimizer, epochs=s.epochs, batches=batches, step=step, scheduler=scheduler,
              evaluate=evaluate, eval_every=1, checkpoint=out / "checkpoint.safetensors",
              metrics_csv=out / "metrics.csv", desc=f"{task.name} teacher seed {seed}", autocast_dtype=dtype,
              grad_clip=s.grad_clip or None)
    fit.identity = {"task": task.name, "seed": seed, "model": str(model), "config": cfg,
                    "data": task.fingerprint(tok_id, train, dev_set)}

    def save() -> None:
        with hub.quiet_transformers():  # written beside, then renamed in: never through a link in ``out``
            save_into(out, lambda tmp: (net.save_pretrained(tmp, safe_serialization=True),
                                        tok.save_pretrained(tmp)))

    def result(history: list[dict[str, float]]) -> dict[str, Any]:
        if "scores" not in last:  # resumed after the last epoch: nothing was evaluated in this session
            fit.evaluate()
        metrics = {**last["scores"].metrics(), "unigram_perplexity": unigram}
        depth, width = causal_lm.depth_and_width(net)
        return {"model": str(model), "init": start, "metric_name": "perplexity", "metric": metrics["perplexity"],
                "metrics": metrics, "config": cfg, "precision": precision, "num_layers": depth, "hidden_size": width,
                "vocab_size": vocab, "parameters": sum(p.numel() for p in net.parameters()),
                "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                "tokenizer": tok_id, "history": history,
                "chance_reason": unigram_reason(metrics["perplexity"], unigram)}

    return TeacherJob(fit=fit, device=dev, save=save, result=result)
