"""GLUE text: tokenised data, length-bucketed batches, BERT teachers and their dump into the store.

The lead's ``teachers.py`` calls ``train_teacher`` once per seed and
``dump.py`` calls ``dump``; student recipes (``recipes/distilbert.py``) reuse
``store_inputs``, ``epoch_batches`` and ``evaluate_split`` so the
student tokenises exactly as the dump did — and is refused when it does not.

Tokenised data is kept flat (ids back to back plus offsets, like the store's
states) and padded per batch to that batch's longest example ("dynamic
padding"). Training batches group examples of similar length in the manner of
Hugging Face's ``trainer_pt_utils.get_length_grouped_indices`` (shuffle, sort
within mega-batches of 50 batches); inference sorts everything by length.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .dump import teacher_fields
from .energy import EnergyMeter
from .errors import MtdError
from .losses import hard_ce, tinybert_layer_map
from .models import bert
from .store import Fingerprint, PrimarySpec, StoreSpec, StoreWriter
from .store.format import DEV_LABEL, LABEL, SOURCE
from .store.writer import check_finite_logits
from .tasks.glue import (SPLITS, GlueSplit, chance_level_check, compute_metrics, get_glue_task, load_hf_split,
                         read_split)
from .train import Fit, epoch_generator, fit, remove_checkpoint, resolve_device, seed_everything
from .utils import prefetch, resolve_options, sha256_file

log = logging.getLogger(__name__)

MEGABATCH = 50  # batches per length-sorted mega-batch (HF get_length_grouped_indices' mega_batch_mult)
DUMP_DEFAULTS: dict[str, Any] = {
    "max_length": 128,  # tokens, [CLS] and [SEP]s included (run_glue --max_seq_length 128)
    "batch_size": 64,  # examples per inference batch (sorted by length, so little padding)
    "data_dir": None,  # default: the teachers' data_dir, else the Hugging Face Hub
    "train_subset": None,  # cache only the first N training examples
    "hidden_layers": None,  # primary's hidden states kept: None = last layer (DistilBERT's cosine loss)
    "attn_layers": (),  # 1-based layers whose pre-softmax scores are kept (TinyBERT)
    "student_layers": None,  # TinyBERT: keep what its layer map g(k) = k*L_T/L_S needs for this depth
    "layer_map": None,  # with student_layers: an explicit map g(0..L_S) when L_T is not a multiple of L_S
    "precision": "auto",  # inference: bf16 autocast on GPU, fp32 on CPU
    "chunk": 2048,  # examples per shard: what an interrupted dump may lose
    "logits_dtype": None,  # float32 (float16 allowed)
    "augmented": None,  # TinyBERT's augmented training file (mtd-cache augment) instead of train.tsv
    "size_budget_gb": 50.0,  # refuse a store estimated larger than this (GB = 1e9 bytes)
}


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Encoded:
    """A tokenised split: token ids of all examples back to back; example i is ``offsets[i]:offsets[i+1]``."""

    ids: np.ndarray  # (R,) int32
    types: np.ndarray  # (R,) int8 segment ids
    offsets: np.ndarray  # (N+1,) int64
    labels: np.ndarray  # (N,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "Encoded":
        """The first ``n`` examples (``--train-subset``)."""
        end = int(self.offsets[n])
        return Encoded(self.ids[:end], self.types[:end], self.offsets[:n + 1], self.labels[:n])


def load_split(task: str, split: str, data_dir: str | Path | None) -> GlueSplit:
    """A GLUE split from ``data_dir``'s TSV files, or from the Hub (``datasets``) when no folder is given."""
    if data_dir is None:
        return load_hf_split(task, split)
    return read_split(task, split, data_dir)


@dataclass(frozen=True)
class TaskInputs:
    """What a dump caches and a student trains on: the tokenised splits and each training row's source."""

    task: str
    max_length: int
    train: Encoded
    dev: Encoded
    source: np.ndarray  # (N,) int64: the original example of each training row (itself without augmentation)
    augmented: dict[str, str] | None = None  # {"path", "sha256"} of TinyBERT's augmented file, if used

    def fingerprint(self, tokenizer: dict[str, str]) -> str:
        return text_fingerprint(self.task, tokenizer, self.max_length, self.train, self.dev,
                                self.source if self.augmented else None)


def task_inputs(task: str, tokenizer, max_length: int, data_dir: str | Path | None,
                augmented: str | Path | None = None, train_subset: int | None = None) -> TaskInputs:
    """The task's splits tokenised; the training rows from ``augmented`` (``mtd-cache augment``) when given."""
    if augmented:
        from .augment import read_augmented

        if not Path(augmented).is_file():
            raise MtdError(f"augmented file {augmented} not found (write it with mtd-cache augment --task {task})")
        split, source = read_augmented(task, augmented)
        aug = {"path": str(Path(augmented).resolve()), "sha256": sha256_file(augmented)}
    else:
        split = load_split(task, "train", data_dir)
        source, aug = np.arange(len(split), dtype=np.int64), None
    train = encode(tokenizer, split, max_length)
    if train_subset:
        n = min(int(train_subset), len(train))
        train, source = train.head(n), source[:n]
    dev = encode(tokenizer, load_split(task, "dev", data_dir), max_length)
    return TaskInputs(task, int(max_length), train, dev, source, aug)


def store_inputs(store, tokenizer: str | None = None, max_length: int | None = None,
                 data_dir: str | Path | None = None) -> tuple[Any, TaskInputs]:
    """(tokenizer, inputs) of a text store, rebuilt from its recorded sources and checked against its fingerprint.

    ``tokenizer`` / ``max_length`` / ``data_dir`` override the store's; anything that
    tokenises differently is refused, naming the difference (``check_text_store``).
    """
    extra = store.spec.extra
    if "tokenizer" not in extra:
        raise MtdError(f"{store.path} is not a text store dumped by mtd-cache (no tokenizer recorded)")
    tok = bert.load_tokenizer(tokenizer or extra["tokenizer"]["name"])
    max_length = int(max_length or extra["max_length"])
    augmented = (extra.get("augmented") or {}).get("path")
    if augmented and not Path(augmented).exists():
        raise MtdError(f"{store.path} was dumped from the augmented file {augmented}, which is gone")
    inputs = task_inputs(store.task, tok, max_length, data_dir or extra.get("data_dir"), augmented,
                         store.num_examples if extra.get("train_subset") else None)
    ident = bert.tokenizer_identity(tok)
    check_text_store(store, ident, max_length, inputs.fingerprint(ident))
    return tok, inputs


def encode(tokenizer, split: GlueSplit, max_length: int) -> Encoded:
    """Tokenise ``[CLS] a [SEP] (b [SEP])``, truncating the longer text first (as TinyBERT's
    ``_truncate_seq_pair``), no padding."""
    args = (split.text_a, split.text_b) if split.text_b is not None else (split.text_a,)
    enc = tokenizer(*args, truncation=True, max_length=int(max_length), return_token_type_ids=True)
    ids, types = enc["input_ids"], enc["token_type_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    flat_types = np.fromiter((t for x in types for t in x), dtype=np.int8, count=int(offsets[-1]))
    return Encoded(flat, flat_types, offsets, np.asarray(split.labels, dtype=np.int64))


def bucket_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator,
                   megabatch: int = MEGABATCH) -> list[np.ndarray]:
    """Training batches of similar length, in a seeded random order; every example once.

    Shuffle, cut into mega-batches of ``megabatch * batch_size``, sort each by
    length, cut into batches, shuffle the batches. The last batch may be partial
    (kept: nothing is silently dropped, unlike TinyBERT's loop).
    """
    perm = torch.randperm(len(lengths), generator=generator).numpy()
    size = megabatch * batch_size
    batches = []
    for lo in range(0, len(perm), size):
        mega = perm[lo:lo + size]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]
        batches += [mega[i:i + batch_size] for i in range(0, len(mega), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches: positions sorted by length, longest first (an out-of-memory shows at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(enc: Encoded, index: Sequence[int], pad_id: int = 0, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad the examples ``index`` to the batch's longest (or ``pad_to``): BERT inputs, labels, index."""
    index = np.asarray(index, dtype=np.int64)
    starts, lens = enc.offsets[index], enc.lengths[index]
    width = int(lens.max()) if pad_to is None else int(pad_to)
    cols = np.arange(width)
    mask = cols[None, :] < lens[:, None]
    src = (starts[:, None] + cols[None, :])[mask]
    ids = np.full((len(index), width), pad_id, dtype=np.int64)
    ids[mask] = enc.ids[src]
    types = np.zeros((len(index), width), dtype=np.int64)
    types[mask] = enc.types[src]
    return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "labels": torch.from_numpy(enc.labels[index]), "index": torch.from_numpy(index)}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def text_fingerprint(task: str, tokenizer: dict[str, str], max_length: int, train: Encoded,
                     dev: Encoded | None, source: np.ndarray | None = None) -> str:
    """The store fingerprint of tokenised GLUE data (``Fingerprint``, see store/format.py).

    Over: task name, the tokenizer's content hash (``bert.tokenizer_identity``; not
    its name, which is a location), max length, and per split the token ids in
    order, their lengths and the labels; for an augmented training set, each row's
    source example too. A student computes it from its own tokenisation and must
    get the store's.
    """
    fp = Fingerprint().update("task", task).update("tokenizer", tokenizer["sha256"])
    fp.update("max_length", int(max_length))
    for name, enc in (("train", train), ("dev", dev)):
        if enc is not None:
            fp.update(f"{name}/ids", enc.ids).update(f"{name}/lengths", enc.lengths)
            fp.update(f"{name}/labels", enc.labels)
    if source is not None:
        fp.update("train/source", np.asarray(source, dtype=np.int64))
    return fp.hexdigest()


def check_text_store(store, tokenizer: dict[str, str], max_length: int, fingerprint: str) -> None:
    """Refuse a store made from other inputs, naming what differs with both values."""
    if fingerprint == store.fingerprint:
        return
    extra = store.spec.extra
    theirs = extra.get("tokenizer") or {}
    if theirs.get("sha256") != tokenizer["sha256"]:
        raise MtdError(f"tokenizer mismatch: the student's {tokenizer['name']!r} (sha256 {tokenizer['sha256'][:12]}) "
                       f"is not the store's {theirs.get('name')!r} (sha256 {str(theirs.get('sha256'))[:12]})")
    if extra.get("max_length") != int(max_length):
        raise MtdError(f"max_length mismatch: the student's {max_length} is not the store's "
                       f"{extra.get('max_length')} ({store.path})")
    augmented = (extra.get("augmented") or {}).get("path")
    where = f"the augmented file {augmented} changed since the dump" if augmented else \
        f"check --data-dir (the store used {extra.get('data_dir')!r})"
    raise MtdError(f"{store.path} was made from other task data (fingerprint {store.fingerprint[:12]}, "
                   f"the student's {fingerprint[:12]}): {where}")


# ----------------------------------------------------------------------------- options, precision


def autocast_dtype(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None, the name recorded): "auto" is bf16 on a GPU that has it, else fp32."""
    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if use_bf16 else "fp32"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise MtdError(f"unknown precision {precision!r}; valid: auto, {', '.join(dtypes)}")
    return dtypes[precision], precision


# ----------------------------------------------------------------------------- inference


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


def epoch_batches(enc: Encoded, batch_size: int, seed: int, fetch: Callable[[dict], dict] | None = None,
                  depth: int = 0, stream: int = 0, pad_to: int | None = None) -> Callable[[int], "LazyBatches"]:
    """epoch -> that epoch's training batches: length-bucketed, in the order seeded by (seed, epoch, stream),
    collated (to ``pad_to`` if given), passed through ``fetch`` (teacher reads), ``depth`` ahead in a thread."""
    def batches(epoch: int) -> LazyBatches:
        order = bucket_batches(enc.lengths, batch_size, epoch_generator(seed, epoch, stream))
        collated = (lambda idx: collate(enc, idx, pad_to=pad_to))
        return LazyBatches(order, collated if fetch is None else (lambda idx: fetch(collated(idx))), depth=depth)

    return batches


class LazyBatches:
    """An epoch's batches: ``fn`` applied to each item when iterated (in a thread ``depth`` ahead if > 0)."""

    def __init__(self, items: list, fn: Callable[[Any], Any], depth: int = 0):
        self.items, self.fn, self.depth = items, fn, depth

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        if self.depth:
            return prefetch(self.items, depth=self.depth, fn=self.fn)
        return (self.fn(i) for i in self.items)


# ----------------------------------------------------------------------------- teachers

TEACHER_DEFAULTS: dict[str, Any] = {
    "lr": 2e-5,  # peak AdamW lr: HF run_glue README recipe (--learning_rate 2e-5)
    "epochs": 3,  # run_glue README (--num_train_epochs 3); TinyBERT task_distill.py default 3.0
    "batch_size": 32,  # run_glue README (--per_device_train_batch_size 32); TinyBERT default 32
    "max_length": 128,  # tokens: run_glue README and TinyBERT (--max_seq_length 128)
    "warmup": 0.1,  # fraction of steps, linear: TinyBERT --warmup_proportion 0.1 (BERT run_classifier.py)
    "weight_decay": 0.01,  # none on bias/LayerNorm: TinyBERT's optimizer groups (BERT's AdamWeightDecay)
    "precision": "auto",  # bf16 autocast on GPU (Fit.autocast_dtype), fp32 on CPU
    "grad_clip": 1.0,  # max gradient norm: BertAdam max_grad_norm 1.0; HF TrainingArguments 1.0
    "eval_batch_size": 128,  # dev inference batch (sorted by length)
}


def train_teacher(task: str, seed: int, model: str | None, data_dir: str | None, out: Path,
                  options: dict[str, Any], device: str | None) -> dict[str, Any]:
    """Fine-tune one seeded BERT teacher on a GLUE task and save it to ``out``.

    The recipe is ``TEACHER_DEFAULTS`` (each with its source) run by ``train.fit``
    with a per-epoch checkpoint in ``out/checkpoint.pt``, so a killed run resumes.
    Writes ``out/model.safetensors`` + config + tokenizer; returns what
    ``teachers.py`` records, ``chance_reason`` included (None unless at chance).
    """
    cfg = resolve_options(TEACHER_DEFAULTS, options, "teacher")
    gt, name, dev = get_glue_task(task), str(model or bert.DEFAULT_TEACHER), resolve_device(device)
    dtype, precision = autocast_dtype(cfg["precision"], dev)
    seed_everything(seed)
    tok = bert.load_tokenizer(name)
    train, dev_set = (encode(tok, load_split(gt.name, s, data_dir), cfg["max_length"]) for s in SPLITS)
    net = bert.load_classifier(name, gt.num_labels, gt.label_names).to(dev)
    last: dict[str, Any] = {}
    job = _teacher_job(net, train, dev_set, cfg, seed, gt.name, dev, dtype, Path(out), last)
    job.identity = {"task": gt.name, "seed": seed, "model": name, "config": cfg,
                    "data": text_fingerprint(gt.name, bert.tokenizer_identity(tok), cfg["max_length"], train, dev_set)}
    with EnergyMeter() as meter:
        history = fit(job, dev)
    if "logits" not in last:  # resumed after the last epoch: nothing was evaluated in this session
        job.evaluate()
    net.save_pretrained(out)
    tok.save_pretrained(out)
    remove_checkpoint(job)
    metrics = compute_metrics(gt, last["logits"], dev_set.labels)
    log.info("teacher seed %d: dev %s %.4f (%s)", seed, gt.metric, metrics[gt.metric], out)
    return {"model": name, "metric_name": gt.metric, "metric": metrics[gt.metric], "metrics": metrics,
            "wall_s": meter.reading.wall_s, "energy_j": meter.reading.energy_j, "config": cfg,
            "precision": precision, "num_layers": bert.num_layers(net), "hidden_size": bert.hidden_size(net),
            "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
            "tokenizer": bert.tokenizer_identity(tok), "history": history,
            "chance_reason": chance_level_check(gt, last["logits"], dev_set.labels)}


def _teacher_job(net: torch.nn.Module, train: Encoded, dev_set: Encoded, cfg: dict[str, Any], seed: int,
                 task: str, device: torch.device, dtype: torch.dtype | None, out: Path, last: dict) -> Fit:
    """The ``Fit`` of one teacher: bucketed batches, CE loss, dev metrics after every epoch."""
    bs = int(cfg["batch_size"])
    steps = int(cfg["epochs"]) * math.ceil(len(train) / bs)
    optimizer, scheduler = bert.optimizer_and_schedule(net, cfg["lr"], cfg["weight_decay"], cfg["warmup"], steps)

    def step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        return {"loss": hard_ce(net(**bert.model_inputs(net, b)).logits, b["labels"])}

    def evaluate() -> dict[str, float]:
        metrics, last["logits"] = evaluate_split(task, net, dev_set, int(cfg["eval_batch_size"]), device, dtype)
        return metrics

    return Fit(model=net, optimizer=optimizer, epochs=int(cfg["epochs"]), batches=epoch_batches(train, bs, seed),
               step=step, scheduler=scheduler, evaluate=evaluate, eval_every=1, checkpoint=out / "checkpoint.pt",
               metrics_csv=out / "metrics.csv", desc=f"{task} teacher seed {seed}", autocast_dtype=dtype,
               grad_clip=cfg["grad_clip"])


# ----------------------------------------------------------------------------- the dump


def dump(task: str, teachers: list, out: Path, primaries: list[int], options: dict[str, Any],
         device: str | None) -> Path:
    """Every teacher's raw train and dev logits, and the primaries' states, into the store ``out``.

    Resumable: work is one shard per teacher per ``chunk`` examples (StoreWriter);
    shards already written are skipped. Teachers must share one tokenizer.
    """
    cfg = resolve_options(DUMP_DEFAULTS, options, "dump")
    gt, dev = get_glue_task(task), resolve_device(device)
    dtype, precision = autocast_dtype(cfg["precision"], dev)
    tok, tok_id = bert.shared_tokenizer([t.path for t in teachers])
    data_dir = cfg["data_dir"] or teachers[0].info.get("data_dir")
    inputs = task_inputs(gt.name, tok, int(cfg["max_length"]), data_dir, cfg["augmented"], cfg["train_subset"])
    train, dev_set = inputs.train, inputs.dev
    configs = [bert.load_config(t.path) for t in teachers]
    spec = StoreSpec(
        task=gt.name, metric=gt.metric, label_names=tuple(gt.label_names), num_examples=len(train),
        num_teachers=len(teachers), num_dev=len(dev_set), logits_dtype=cfg["logits_dtype"] or "float32",
        fingerprint=inputs.fingerprint(tok_id), precision=precision,
        primaries={p: _primary_spec(configs[p], cfg) for p in primaries}, **teacher_fields(teachers),
        extra={"tokenizer": tok_id, "max_length": int(cfg["max_length"]), "train_subset": cfg["train_subset"],
               "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
               "augmented": inputs.augmented,
               "num_layers": int(configs[0].num_hidden_layers),  # a resume must batch alike: same bits
               "batch_size": int(cfg["batch_size"]), "chunk": int(cfg["chunk"])})
    check_size(spec, train.lengths, out, float(cfg["size_budget_gb"]))
    w = StoreWriter.open(out, spec)
    for name, values in ((LABEL, train.labels), (SOURCE, inputs.source), (DEV_LABEL, dev_set.labels)):
        if not w.has(name):
            w.put(name, values)
    with EnergyMeter() as meter:
        for t, teacher in enumerate(teachers):
            _dump_teacher(w, t, teacher, train, dev_set, cfg, dev, dtype)
    w.add_cost(meter.reading.wall_s, meter.reading.energy_j)
    return w.finish()


# ----------------------------------------------------------------------------- size


def check_size(spec: StoreSpec, lengths: np.ndarray, out: Path, budget_gb: float) -> int:
    """Refuse, before writing, a store over the budget or over the free disk space; returns the estimate."""
    size = spec.estimate_bytes(lengths)
    log.info("estimated store size: %.2f GB (%s)", size / 1e9, out)
    what = f"{len(spec.primaries)} primary teacher(s)' states" if spec.primaries else "logits alone"
    if size > budget_gb * 1e9:
        raise MtdError(f"the store would take {size / 1e9:.1f} GB ({what}), over the {budget_gb:g} GB budget: "
                       "raise it with --set size_budget_gb=N, keep fewer layers or examples, or dump without "
                       "--primary and let the student compute the primary online (mtd-train --set ild_source=online)")
    folder = Path(out).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if 2 * size > free:  # the merge writes the store beside its shards: twice the size at the peak
        raise MtdError(f"the store would take {size / 1e9:.1f} GB and its shards as much again; {folder} has "
                       f"{free / 1e9:.1f} GB free")
    return size


def _layers(value: Any, default: Sequence[int]) -> tuple[int, ...]:
    """A layer list from an option: None, an int, "0,6" or a list."""
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def _primary_spec(config, cfg: dict[str, Any]) -> PrimarySpec:
    depth = int(config.num_hidden_layers)
    hidden, attn = _layers(cfg["hidden_layers"], [depth]), _layers(cfg["attn_layers"], ())
    if cfg["student_layers"] is not None:
        if cfg["hidden_layers"] is not None or cfg["attn_layers"]:
            raise MtdError("give student_layers (TinyBERT's layer map) or hidden_layers/attn_layers, not both")
        layer_map = None if cfg["layer_map"] is None else _layers(cfg["layer_map"], ())
        hidden = tuple(tinybert_layer_map(depth, int(cfg["student_layers"]), layer_map))
        attn = hidden[1:]
    hidden = tuple(g + depth + 1 if g < 0 else g for g in hidden)  # -1 = last
    bad = [g for g in hidden if not 0 <= g <= depth] + [g for g in attn if not 1 <= g <= depth]
    if bad:
        raise MtdError(f"layer {bad[0]} is outside the teacher's layers (hidden 0..{depth}, attention 1..{depth})")
    return PrimarySpec(hidden_size=int(config.hidden_size), hidden_layers=hidden, attn_layers=attn,
                       num_heads=int(config.num_attention_heads) if attn else 0, attn_pre_softmax=True)


def _dump_teacher(w: StoreWriter, t: int, teacher, train: Encoded, dev_set: Encoded, cfg: dict[str, Any],
                  device: torch.device, dtype: torch.dtype | None) -> None:
    """One teacher's missing shards: logits (and states) per chunk of examples, then dev."""
    ps, n, size = w.spec.primaries.get(t), len(train), int(cfg["chunk"])
    chunks = [(a, min(a + size, n)) for a in range(0, n, size)]
    todo = [(a, b) for a, b in chunks if not w.has_logits(t, a, b) or (ps and not w.has_primary(t, a, b))]
    if not todo and w.has_dev(t):
        log.info("teacher %d: dumped already", t)
        return
    model = bert.load_classifier(teacher.path, w.spec.num_labels).to(device)
    bs = int(cfg["batch_size"])
    with tqdm(total=sum(b - a for a, b in todo), desc=f"dump teacher {t}", unit="ex", leave=False,
              disable=None if sys.stderr.isatty() else True) as bar:
        for a, b in todo:
            o = run_model(model, train, np.arange(a, b), bs, device, dtype, ps.hidden_layers if ps else (),
                          ps.attn_layers if ps else (), progress=bar.update)
            check_finite_logits(o.logits, "train logits", a, teacher=t)
            if ps:
                w.put_primary(t, a, train.lengths[a:b], o.hidden, o.attn)
            w.put_logits(t, a, o.logits)
    if not w.has_dev(t):
        metrics, logits = evaluate_split(w.spec.task, model, dev_set, bs, device, dtype)
        check_finite_logits(logits, "dev logits", teacher=t)
        w.put_dev(t, logits, metrics["metric"])
        log.info("teacher %d: dev %s %.4f", t, w.spec.metric, metrics["metric"])
