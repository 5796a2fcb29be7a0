"""DistilBERT students: CE + KD^k from the mean of k teachers' logits + cosine to the primary's last layer.

Loss per batch (DESIGN.md "Losses"; Sanh et al. 2019, task-specific variant):

    L = alpha_ce * CE(z_S, y) + alpha_kd * L_KD^k(z_S, mean_i z_Ti; t) + alpha_cos * L_cos(h_S, h_P)

* ``L_KD^k``: ``losses.kd_loss`` with divergence "kl" and scale "sum_t2", as HF
  distiller.py: ``KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) * T**2``
  (batchmean there is over tokens of the MLM; here over examples).
* ``L_cos``: ``losses.cosine_hidden_loss``: mean over non-padding tokens of
  1 - cos(student last hidden state, primary teacher's last hidden state) —
  distiller.py's ``CosineEmbeddingLoss`` on ``masked_select``-ed states. The
  primary's states come from the store (fp16, unpadded, padded on the device by
  ``ragged.pad_hidden``) or, with ``--online``, from the primary run in the loop.
* The CE-only baseline (no teachers) trains with ``alpha_ce * CE`` alone.

The student is a DistilBERT architecture in both initialisations: a DistilBERT
checkpoint (``init``, default distilbert-base-uncased), or with
``init_from_teacher`` the teacher's embeddings and evenly spaced layers mapped
onto DistilBERT as extract_distilbert.py does (``models.bert.distilbert_from_bert``).
One architecture keeps the two inits comparable (same parameters, no segment
embedding, same head), and is the student the paper distils.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..errors import MtdError
from ..losses import cosine_hidden_loss, hard_ce, kd_loss
from ..models import bert
from ..ragged import pad_hidden
from ..tasks.glue import get_glue_task
from ..text import Encoded, autocast_dtype, epoch_batches, evaluate_split, store_inputs, to_device
from ..train import Fit
from . import StudentContext, online_target, teacher_path

NEEDS_PRIMARY = True
DEFAULTS: dict[str, Any] = {
    "lr": 5e-5,  # peak AdamW lr: TinyBERT task_distill.py --learning_rate default; HF TrainingArguments default
    "epochs": 3,  # run_glue README recipe and TinyBERT's --num_train_epochs default
    "batch_size": 32,  # run_glue README and TinyBERT --train_batch_size
    "warmup": 0.1,  # linear warm-up fraction: TinyBERT --warmup_proportion (BERT run_classifier.py)
    "weight_decay": 0.01,  # none on bias/LayerNorm: TinyBERT's BertAdam groups
    "grad_clip": 1.0,  # BertAdam max_grad_norm; HF TrainingArguments max_grad_norm
    "temperature": 2.0,  # HF distillation train.py --temperature default, used by its DistilBERT recipe
    "alpha_ce": 1.0,  # hard-label CE weight: DESIGN.md's L_CE + L_KD^k + L_cos (unweighted sum);
    "alpha_kd": 1.0,  # HF's pre-training recipe weighs KD 5.0 / MLM 2.0 / cos 1.0 (its --alpha_ce/_mlm/_cos)
    "alpha_cos": 1.0,
    "kd_scale": "sum_t2",  # sum over classes, mean over the batch, times t^2 (distiller.py's batchmean * T**2)
    "divergence": "kl",  # as distiller.py's KLDivLoss (same gradients as "ce")
    "init": "distilbert-base-uncased",  # student checkpoint: Hub name or folder (DistilBERT, Sanh et al. 2019)
    "init_from_teacher": False,  # instead: teacher embeddings + evenly spaced layers (extract_distilbert.py)
    "init_teacher": None,  # which teacher to cut: None = the primary (teacher 0 for the CE-only baseline)
    "student_layers": 6,  # DistilBERT's depth; with init_from_teacher 12 -> 6 takes 0,2,4,7,9,11
    "fold_token_type": True,  # init_from_teacher: add the segment-0 embedding into positions (see bert.py)
    "tokenizer": None,  # None: the store's (saved with the teachers); another must tokenise identically
    "max_length": None,  # None: the store's; another is refused (other inputs than the store's)
    "precision": "auto",  # bf16 autocast on GPU, fp32 on CPU
    "eval_batch_size": 128,
    "eval_every": 1,  # dev metrics every epoch (0: after the last only)
    "prefetch": 3,  # batches read from the store ahead, in a thread
}


def build(ctx: StudentContext) -> Fit:
    """Model, optimiser, batches and loss of one DistilBERT student run."""
    cfg, store, device = ctx.config, ctx.store, ctx.device
    dtype, precision = autocast_dtype(cfg["precision"], device)
    tok, train, dev_set = _data(ctx)
    net = _student(ctx, tok).to(device)
    use_kd = bool(ctx.teachers) and cfg["alpha_kd"] > 0
    use_cos = bool(ctx.teachers) and cfg["alpha_cos"] > 0
    if use_cos and ctx.primary is None:
        raise MtdError("alpha_cos > 0 needs a primary teacher (--primary)")
    fetch, target = _teacher_side(ctx, net, use_kd, use_cos, device)
    bs = int(cfg["batch_size"])
    steps = int(cfg["epochs"]) * math.ceil(len(train) / bs)
    optimizer, scheduler = bert.optimizer_and_schedule(net, cfg["lr"], cfg["weight_decay"], cfg["warmup"], steps)

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        out = net(**bert.model_inputs(net, b), output_hidden_states=use_cos)
        ce = hard_ce(out.logits, b["labels"])
        terms, loss = {"ce": ce}, cfg["alpha_ce"] * ce
        if use_kd or use_cos:
            z, h = target(b)
            if use_kd:
                terms["kd"] = kd_loss(out.logits, z, cfg["temperature"], cfg["kd_scale"], cfg["divergence"])
                loss = loss + cfg["alpha_kd"] * terms["kd"]
            if use_cos:
                terms["cos"] = cosine_hidden_loss(out.hidden_states[-1], h, b["attention_mask"])
                loss = loss + cfg["alpha_cos"] * terms["cos"]
        return {"loss": loss, **terms}

    def evaluate() -> dict[str, float]:
        return evaluate_split(store.task, net, dev_set, int(cfg["eval_batch_size"]), device, dtype)[0]

    ctx.extra.update(precision=precision, student_params=sum(p.numel() for p in net.parameters()),
                     teacher_source="online" if ctx.online else "store",
                     loss_terms=["ce"] + ["kd"] * use_kd + ["cos"] * use_cos)
    batches = epoch_batches(train, bs, ctx.seed, fetch, depth=int(cfg["prefetch"]))
    return Fit(model=net, optimizer=optimizer, scheduler=scheduler, epochs=int(cfg["epochs"]), batches=batches,
               step=step, evaluate=evaluate, eval_every=int(cfg["eval_every"]), checkpoint=ctx.checkpoint,
               metrics_csv=ctx.metrics_csv, desc=f"distilbert k={len(ctx.teachers)}", autocast_dtype=dtype,
               grad_clip=cfg["grad_clip"])


# ----------------------------------------------------------------------------- data


def _data(ctx: StudentContext) -> tuple[Any, Encoded, Encoded]:
    """The task tokenised as the store's inputs were, or refused (tokenizer / max length named)."""
    cfg = ctx.config
    tok, inputs = store_inputs(ctx.store, cfg["tokenizer"], cfg["max_length"], ctx.data_dir)
    ctx.extra.update(tokenizer=bert.tokenizer_identity(tok), max_length=inputs.max_length)
    return tok, inputs.train, inputs.dev


# ----------------------------------------------------------------------------- the student


def _student(ctx: StudentContext, tok) -> torch.nn.Module:
    cfg, store = ctx.config, ctx.store
    task = get_glue_task(store.task)
    if cfg["init_from_teacher"]:
        t = cfg["init_teacher"] if cfg["init_teacher"] is not None else (ctx.primary or 0)
        teacher = bert.load_classifier(teacher_path(ctx, int(t)), task.num_labels)
        layers = bert.evenly_spaced_layers(bert.num_layers(teacher), int(cfg["student_layers"]))
        net = bert.distilbert_from_bert(teacher, layers, bool(cfg["fold_token_type"]))
        ctx.extra.update(init=f"teacher {t}", init_layers=layers, init_teacher_layers=bert.num_layers(teacher))
    else:
        net = bert.load_classifier(cfg["init"], task.num_labels, task.label_names)
        if bert.num_layers(net) != int(cfg["student_layers"]):
            raise MtdError(f"init {cfg['init']!r} has {bert.num_layers(net)} layers, student_layers is "
                           f"{cfg['student_layers']}: set student_layers={bert.num_layers(net)} or init_from_teacher")
        ctx.extra.update(init=cfg["init"], init_layers=None)
    if net.config.vocab_size < len(tok):
        raise MtdError(f"the student's vocabulary has {net.config.vocab_size} entries, the tokenizer "
                       f"{len(tok)}: they do not belong together")
    return net


# ----------------------------------------------------------------------------- the teacher side

Fetch = Callable[[dict[str, Any]], dict[str, Any]]
Target = Callable[[dict[str, Any]], tuple[torch.Tensor | None, torch.Tensor | None]]


def _teacher_side(ctx: StudentContext, net: torch.nn.Module, use_kd: bool, use_cos: bool,
                  device: torch.device) -> tuple[Fetch, Target]:
    """(what a batch reads on the host, how the step gets teacher logits and primary states)."""
    if ctx.online:
        return (lambda b: b), online_target(ctx, use_cos, device)
    layer_pos = _last_layer_position(ctx, net) if use_cos else None
    teachers, store = list(ctx.teachers), ctx.store
    states = store.primary(ctx.primary) if use_cos else None

    def fetch(b: dict[str, Any]) -> dict[str, Any]:
        idx = b["index"].numpy()
        if use_kd:
            b["teacher_logits"] = torch.from_numpy(store.mean_logits(teachers, idx))
        if states is not None:
            rb = states.read(idx)
            b["hidden"], b["hidden_lengths"] = torch.from_numpy(rb.hidden), torch.from_numpy(rb.lengths)
        return b

    def target(b: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        h = None
        if states is not None:
            h = pad_hidden(b["hidden"], b["hidden_lengths"], len(states.hidden_layers),
                           max_length=b["input_ids"].shape[1])[:, layer_pos]
        return b.get("teacher_logits"), h

    return fetch, target


def _last_layer_position(ctx: StudentContext, net: torch.nn.Module) -> int:
    """Where the primary's last layer sits among the layers the store kept; widths must agree."""
    states, last = ctx.store.primary(ctx.primary), ctx.store.spec.extra.get("num_layers")
    if last not in states.hidden_layers:
        raise MtdError(f"the store keeps layers {list(states.hidden_layers)} of primary {ctx.primary}, not its last "
                       f"({last}): dump again with the default hidden_layers, or set alpha_cos=0")
    if states.hidden_size != bert.hidden_size(net):
        raise MtdError(f"cosine loss needs equal widths: student hidden size {bert.hidden_size(net)}, primary "
                       f"teacher {states.hidden_size} (use init_from_teacher, or set alpha_cos=0)")
    return states.hidden_layers.index(last)


def layer_choice(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers ``init_from_teacher`` copies (re-exported for the record and tests)."""
    return bert.evenly_spaced_layers(teacher_layers, student_layers)

