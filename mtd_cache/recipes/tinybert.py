"""TinyBERT students: stage 1 distils the primary's intermediate layers, stage 2 the k teachers' averaged logits.

Reference: huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py and README (Jiao et al. 2020).

Stage 1, intermediate-layer distillation (ILD) from the primary teacher alone:

    L_ILD = sum_{k=0..L_S} MSE(fit_dense(h_S^k), h_P^{g(k)}) + sum_{m=1..L_S} MSE(A_S^m, A_P^{g(m)})

with one shared projection ``fit_dense`` (student width -> teacher width), the
embedding output as layer 0, pre-softmax attention scores with entries <= -100
zeroed in both models, and g(k) = k * L_T / L_S (``losses.tinybert_layer_map``).
AdamW at a constant lr 5e-5 (BertAdam's schedule "none"), 10 epochs, batch 32.

Stage 2, prediction-layer distillation (PLD): soft cross-entropy between
softmax(mean_i z^{T_i} / t) and the student at t = 1, averaged over batch and
classes, no t^2 (the reference's ``soft_cross_entropy``; ``kd_scale="mean"``),
no hard-label term; AdamW lr 3e-5, 10% linear warm-up then linear decay, 3 epochs.

The stage-1 model depends only on what stage 1 reads: the primary teacher, the
training inputs (the store's fingerprint: data, augmentation, tokenizer, length),
the seed and the stage-1 recipe. It is keyed by a hash of those
(``stage1_identity``), kept under ``<out>/<task>/tinybert/stage1/<id>/`` and
reused by every subset that shares them: a sweep trains T*R stage-1 models, not
one per (subset, primary, repeat). ``run_stage1`` is the sweep's stage-1 job.

Departures from the reference, each named (and recorded in the run):
- ``ild_mask="valid"`` (the default, and the only choice with cached states):
  the MSEs average over real tokens (attention: pairs of real tokens). The
  reference pads every batch to the maximum length and averages over every entry,
  pad positions included; the unpadded store holds real tokens only. With the
  primary computed online (``ild_source=online``), ``ild_mask="reference"``
  reproduces the reference's padded loss exactly.
- The reported score is the final model's; the reference keeps the stage-2
  checkpoint that scores best on dev (every 100 steps), which selects on the
  evaluation set. ``select_on_dev=True`` reproduces that, and the record says so.
- The reference's per-task stage-1 epochs (CoLA 50, MRPC 20, SST-2 10, ...) never
  took effect (``args.num_train_epoch`` misspelt); ``task_epochs=True`` applies them.
- AdamW with bias correction instead of BertAdam (none); the last partial batch is
  trained on (the reference skips it); batches are length-bucketed, not padded to 128.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..energy import EnergyMeter
from ..errors import MtdError
from ..losses import attention_mse, hard_ce, hidden_mse, kd_loss, tinybert_layer_map
from ..models import bert
from ..models.tinybert import DEFAULT_INIT, TinyBertStudent, from_general, from_teacher
from ..ragged import pad_attention, pad_hidden
from ..tasks.glue import get_glue_task
from ..text import TaskInputs, autocast_dtype, epoch_batches, evaluate_split, store_inputs, to_device
from ..train import Fit, fit, remove_checkpoint, seed_everything
from ..utils import atomic_write_json, canonical_json, sha256_text
from . import StudentContext, online_target, teacher_path

log = logging.getLogger(__name__)

NEEDS_PRIMARY = True
STAGE1_VERSION = 1  # bump when stage-1 training changes: old stage-1 models are then not reused
# The reference's intended stage-1 epochs (task_distill.py ``default_params``; dead code there).
TASK_ILD_EPOCHS = {"cola": 50, "mnli": 5, "mrpc": 20, "sst-2": 10, "sts-b": 20, "qqp": 5, "qnli": 10, "rte": 20}

DEFAULTS: dict[str, Any] = {
    # the student
    "init": DEFAULT_INIT,  # general TinyBERT checkpoint (Hub name or folder); README: General_TinyBERT
    "init_from_teacher": False,  # instead: the teacher's embeddings and its layers g(1..L_S)
    "init_teacher": None,  # which teacher to cut: None = the primary (teacher 0 for the CE-only baseline)
    "student_layers": 4,  # TinyBERT-4L; must match the init checkpoint's depth
    "layer_map": None,  # g(0..L_S) when L_T is not a multiple of L_S (e.g. "0,2,5,8")
    # stage 1 (ILD)
    "ild_epochs": 10,  # README step 1: --num_train_epochs 10
    "ild_lr": 5e-5,  # README step 1 passes no --learning_rate: the default 5e-5
    "ild_schedule": "constant",  # task_distill.py: schedule 'none' unless --pred_distill
    "ild_source": "auto",  # primary states from the store when it has them, else the primary online
    "ild_mask": "valid",  # "reference": pad to max_length, average over every entry (online primary only)
    "task_epochs": False,  # stage-1 epochs from the reference's per-task table (a typo disabled it there)
    # stage 2 (PLD)
    "epochs": 3,  # README step 2: --num_train_epochs 3
    "lr": 3e-5,  # README step 2: --learning_rate 3e-5
    "warmup": 0.1,  # --warmup_proportion 0.1, linear
    "temperature": 1.0,  # task_distill.py --temperature default 1
    "kd_scale": "mean",  # soft_cross_entropy: (-p * log q).mean() over batch and classes, no t^2
    "divergence": "ce",
    "alpha_kd": 1.0,
    "alpha_ce": 0.0,  # the reference has no hard-label term (the CE-only baseline uses CE alone)
    "select_on_dev": False,  # the reference: keep the best dev checkpoint, evaluated every eval_step steps
    "eval_step": 100,  # README step 2: --eval_step 100
    # both stages
    "batch_size": 32,  # README: --train_batch_size 32
    "weight_decay": 0.01,  # BertAdam groups: 0.01, none on bias/LayerNorm
    "grad_clip": 1.0,  # BertAdam max_grad_norm
    "tokenizer": None,  # None: the store's
    "max_length": None,  # None: the store's (a dump-time choice; README 128)
    "precision": "auto",
    "eval_batch_size": 128,
    "eval_every": 1,
    "prefetch": 3,
}
STAGE1_KEYS = ("init", "init_from_teacher", "init_teacher", "student_layers", "layer_map", "ild_epochs", "ild_lr",
               "ild_schedule", "ild_mask", "task_epochs", "batch_size", "weight_decay", "grad_clip", "precision")


# ----------------------------------------------------------------------------- the run


def build(ctx: StudentContext) -> Fit:
    """Stage 1 (trained, or reused when done already), then the stage-2 ``Fit`` of one TinyBERT run."""
    cfg, store, device = ctx.config, ctx.store, ctx.device
    _check_choices(cfg)
    dtype, precision = autocast_dtype(cfg["precision"], device)
    tok, inputs = _data(ctx)
    if ctx.teachers:
        folder, info = stage1(ctx, tok, inputs)
        net = TinyBertStudent.load(folder)
        ctx.extra.update(stage1_id=info["stage1_id"], stage1_reused=info["reused"], stage1_wall_s=info["wall_s"],
                         stage1_energy_j=info["energy_j"], stage1_dir=str(folder), ild_source=info["ild_source"],
                         ild_mask=cfg["ild_mask"], layer_map=info["layer_map"], init=info["init"],
                         init_layers=info["init_layers"])
    else:  # the CE-only baseline: no primary, no stage 1
        net, init = _init_student(ctx, tok, None)
        ctx.extra.update(stage1_id=None, **init)
    seed_everything(ctx.seed)  # stage 2 draws the same whether stage 1 was trained just now or reused
    net.to(device)
    train, dev_set = inputs.train, inputs.dev
    use_kd = bool(ctx.teachers) and cfg["alpha_kd"] > 0
    alpha_ce = cfg["alpha_ce"] if ctx.teachers else 1.0
    fetch, target = _logit_side(ctx, use_kd, device)
    bs = int(cfg["batch_size"])
    total = int(cfg["epochs"]) * math.ceil(len(train) / bs)
    optimizer, scheduler = bert.optimizer_and_schedule(net, cfg["lr"], cfg["weight_decay"], cfg["warmup"], total)

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        logits = net(**bert.model_inputs(net, b)).logits
        terms: dict[str, torch.Tensor] = {}
        loss = logits.new_zeros(())
        if alpha_ce > 0:
            terms["ce"] = hard_ce(logits, b["labels"])
            loss = loss + alpha_ce * terms["ce"]
        if use_kd:
            terms["kd"] = kd_loss(logits, target(b), cfg["temperature"], cfg["kd_scale"], cfg["divergence"])
            loss = loss + cfg["alpha_kd"] * terms["kd"]
        return {"loss": loss, **terms}

    def dev_metric() -> dict[str, float]:
        return evaluate_split(store.task, net, dev_set, int(cfg["eval_batch_size"]), device, dtype)[0]

    on_step, evaluate = _selection(ctx, net, dev_metric, total) if cfg["select_on_dev"] else (None, dev_metric)
    ctx.extra.update(precision=precision, student_params=sum(p.numel() for p in net.parameters()),
                     teacher_source="online" if ctx.online else "store", select_on_dev=bool(cfg["select_on_dev"]),
                     loss_terms=["ce"] * (alpha_ce > 0) + ["kd"] * use_kd)
    batches = epoch_batches(train, bs, ctx.seed, fetch, depth=int(cfg["prefetch"]))
    return Fit(model=net, optimizer=optimizer, scheduler=scheduler, epochs=int(cfg["epochs"]), batches=batches,
               step=step, evaluate=evaluate, eval_every=int(cfg["eval_every"]), checkpoint=ctx.checkpoint,
               metrics_csv=ctx.metrics_csv, desc=f"tinybert k={len(ctx.teachers)}", autocast_dtype=dtype,
               grad_clip=cfg["grad_clip"], on_step=on_step)


def run_stage1(req) -> dict[str, Any]:
    """The sweep's stage-1 job: train (or find) the stage-1 model of ``req``'s primary and seed."""
    ctx = _stage1_job_context(req)
    seed_everything(ctx.seed)
    tok, inputs = _data(ctx)
    _, info = stage1(ctx, tok, inputs)
    return {"status": "skipped" if info["reused"] else "done", "stage1_id": info["stage1_id"],
            "wall_s": info["wall_s"]}


def _check_choices(cfg: dict[str, Any]) -> None:
    for key, valid in (("ild_source", ("auto", "store", "online")), ("ild_mask", ("valid", "reference")),
                       ("ild_schedule", ("constant", "linear"))):
        if cfg[key] not in valid:
            raise MtdError(f"unknown {key} {cfg[key]!r}; valid: {', '.join(valid)}")


def _data(ctx: StudentContext) -> tuple[Any, TaskInputs]:
    tok, inputs = store_inputs(ctx.store, ctx.config["tokenizer"], ctx.config["max_length"], ctx.data_dir)
    ctx.extra.update(tokenizer=bert.tokenizer_identity(tok), max_length=inputs.max_length,
                     augmented=inputs.augmented)
    return tok, inputs


# ----------------------------------------------------------------------------- stage 1


def teacher_depth(ctx: StudentContext) -> int:
    depth = ctx.store.spec.extra.get("num_layers")
    if depth is None:
        raise MtdError(f"{ctx.store.path} does not record its teachers' depth (dumped by an older mtd-cache)")
    return int(depth)


def layer_map(ctx: StudentContext) -> list[int]:
    """g(0..L_S): the teacher hidden state each student hidden state distils (0 = embeddings)."""
    value = ctx.config["layer_map"]
    if isinstance(value, str):
        value = [int(v) for v in value.replace(" ", "").split(",") if v]
    return tinybert_layer_map(teacher_depth(ctx), int(ctx.config["student_layers"]), value)


def ild_source(ctx: StudentContext, gmap: list[int]) -> str:
    """"store" or "online": where stage 1 gets the primary's states (refused when neither can serve)."""
    want, p, path = ctx.config["ild_source"], ctx.primary, ctx.store.path
    if p not in ctx.store.primaries:
        missing = f"{path} holds no states of primary {p}"
    else:
        states = ctx.store.primary(p)
        lacks = sorted({g for g in gmap if g not in states.hidden_layers} |
                       {g for g in gmap[1:] if g not in states.attn_layers})
        missing = f"{path} lacks layers {lacks} of primary {p} (layer map {gmap})" if lacks else None
    if ctx.config["ild_mask"] == "reference":
        if want == "store":
            raise MtdError("ild_mask=reference averages over padded tensors, which the store does not hold: "
                           "use ild_source=online (the primary run in the loop)")
        return "online"
    if want == "auto" and ctx.online:  # --online: every teacher in the loop, the primary's states included
        return "online"
    if want == "store" or (want == "auto" and missing is None):
        if missing is not None:
            raise MtdError(f"{missing}: dump with --primary {p} --student-layers {len(gmap) - 1}, "
                           "or use ild_source=online")
        return "store"
    return "online"


def stage1_identity(ctx: StudentContext, gmap: list[int], source: str) -> dict[str, Any]:
    """Everything stage 1 reads: its hash is the stage-1 id (the inputs by the store's fingerprint)."""
    cfg, p = ctx.config, ctx.primary
    shas = list(ctx.store.attrs.get("teachers_sha256", []))
    init_teacher = cfg["init_teacher"] if cfg["init_teacher"] is not None else p
    return {"version": STAGE1_VERSION, "task": ctx.store.task, "inputs": ctx.store.fingerprint,
            "primary_sha256": shas[p] if shas else f"index {p}", "seed": ctx.seed, "layer_map": gmap,
            "ild_source": source,
            "init_teacher_sha256": shas[init_teacher] if cfg["init_from_teacher"] and shas else None,
            "max_length": int(cfg["max_length"] or ctx.store.spec.extra.get("max_length")),
            "ild_epochs": ild_epochs(ctx), "precision": autocast_dtype(cfg["precision"], ctx.device)[1],
            "recipe": {k: cfg[k] for k in STAGE1_KEYS}}


def ild_epochs(ctx: StudentContext) -> int:
    if ctx.config["task_epochs"]:
        return TASK_ILD_EPOCHS.get(ctx.store.task, int(ctx.config["ild_epochs"]))
    return int(ctx.config["ild_epochs"])


def stage1(ctx: StudentContext, tok, inputs: TaskInputs) -> tuple[Path, dict[str, Any]]:
    """The stage-1 model of (primary, seed, inputs, recipe): trained here, or the one trained before.

    A lock per stage-1 id serialises concurrent runs (sweep workers): the first trains,
    the others wait and reuse. Work in progress lives in ``<id>.partial/`` (with a
    per-epoch checkpoint, so a killed stage 1 resumes); the folder is renamed to
    ``<id>/`` when the model and its ``stage1.json`` are written.
    """
    gmap, source, identity, folder = stage1_location(ctx)
    sid, root = folder.name, folder.parent
    partial = root / f"{sid}.partial"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{sid}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process trains this stage 1
        done = _stage1_done(folder)
        if done is not None:
            log.info("stage 1 %s: reusing %s", sid[:12], folder)
            return folder, {**done, "reused": True}
        info = _train_stage1(ctx, tok, inputs, gmap, source, identity, sid, partial)
        if folder.exists():
            shutil.rmtree(folder)  # a torn earlier attempt (no stage1.json)
        partial.rename(folder)
    return folder, {**info, "reused": False}


def stage1_location(ctx: StudentContext) -> tuple[list[int], str, dict[str, Any], Path]:
    """(layer map, ILD source, stage-1 identity, its folder ``<work_dir>/stage1/<sha256 of the identity>``)."""
    gmap = layer_map(ctx)
    source = ild_source(ctx, gmap)
    identity = stage1_identity(ctx, gmap, source)
    return gmap, source, identity, Path(ctx.work_dir or ".") / "stage1" / sha256_text(canonical_json(identity))


def stage1_done(req) -> bool:
    """Whether the stage-1 model of a sweep's stage-1 job exists (reads no training data)."""
    return _stage1_done(stage1_location(_stage1_job_context(req))[3]) is not None


def _stage1_job_context(req) -> StudentContext:
    """A sweep stage-1 job's context: the request checked as a run's, with no run record of its own."""
    from ..students import make_context, prepare

    _, store, identity, _, _ = prepare(req)
    ctx = make_context(req, store, identity["recipe"], None)
    _check_choices(ctx.config)
    return ctx


def _stage1_done(folder: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((folder / "stage1.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("status") == "done" and (folder / "model.safetensors").exists() else None


def _train_stage1(ctx: StudentContext, tok, inputs: TaskInputs, gmap: list[int], source: str,
                  identity: dict[str, Any], sid: str, partial: Path) -> dict[str, Any]:
    cfg, device = ctx.config, ctx.device
    dtype, precision = autocast_dtype(cfg["precision"], device)
    seed_everything(ctx.seed)
    fit_size, heads = _primary_dims(ctx)
    net, init = _init_student(ctx, tok, fit_size)
    net.to(device)
    if bert.num_heads(net.bert) != heads:
        raise MtdError(f"attention distillation needs equal head counts: student {bert.num_heads(net.bert)}, "
                       f"primary teacher {heads}")
    train = inputs.train
    pad_to = inputs.max_length if cfg["ild_mask"] == "reference" else None
    fetch, target = _state_side(ctx, gmap, source, device)
    bs, epochs = int(cfg["batch_size"]), ild_epochs(ctx)
    steps = epochs * math.ceil(len(train) / bs)
    optimizer, scheduler = bert.optimizer_and_schedule(net, cfg["ild_lr"], cfg["weight_decay"], 0.0, steps,
                                                       schedule=cfg["ild_schedule"])
    masked = cfg["ild_mask"] == "valid"

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        b = to_device(batch, device)
        hidden, scores = target(b)
        out = net(**bert.model_inputs(net, b), output_hidden_states=True, output_scores=True)
        return ild_loss(net, out, hidden, scores, b["attention_mask"] if masked else None)

    batches = epoch_batches(train, bs, ctx.seed, fetch, depth=int(cfg["prefetch"]), stream=1, pad_to=pad_to)
    job = Fit(model=net, optimizer=optimizer, scheduler=scheduler, epochs=epochs, batches=batches, step=step,
              checkpoint=partial / "checkpoint.pt", metrics_csv=partial / "metrics.csv",
              desc=f"tinybert stage 1 primary {ctx.primary}", autocast_dtype=dtype, grad_clip=cfg["grad_clip"])
    job.identity = {"stage1_id": sid}
    log.info("stage 1 %s: %d epochs of ILD from primary %d (%s states), layer map %s", sid[:12], epochs,
             ctx.primary, source, gmap)
    with EnergyMeter() as meter:
        history = fit(job, device)
    net.save(partial)
    remove_checkpoint(job)
    info = {"stage1_id": sid, "status": "done", "identity": identity, "primary": ctx.primary, "seed": ctx.seed,
            "layer_map": gmap, "ild_source": source, "precision": precision, "wall_s": meter.reading.wall_s,
            "energy_j": meter.reading.energy_j, "history": history, **init}
    atomic_write_json(partial / "stage1.json", info)
    return info


def ild_loss(net: TinyBertStudent, out, teacher_hidden: torch.Tensor, teacher_scores: torch.Tensor,
             mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """TinyBERT's stage-1 loss: hidden MSE through ``fit_dense`` over g(0..L_S) + attention MSE over g(1..L_S).

    ``teacher_hidden`` (B, L_S+1, L, H) and ``teacher_scores`` (B, L_S, heads, L, L) are the
    primary's mapped layers; ``mask`` None averages over every entry (the reference),
    else over real tokens (``losses.hidden_mse`` / ``attention_mse``).
    """
    rep = sum(hidden_mse(net.fit_dense(h), teacher_hidden[:, k], mask) for k, h in enumerate(out.hidden_states))
    att = sum(attention_mse(s, teacher_scores[:, m], mask) for m, s in enumerate(out.scores))
    return {"loss": rep + att, "rep": rep, "att": att}


StateTarget = Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]


def _state_side(ctx: StudentContext, gmap: list[int], source: str,
                device: torch.device) -> tuple[Callable[[dict], dict], StateTarget]:
    """(what a batch reads on the host, how the step gets the primary's mapped hidden states and scores)."""
    if source == "online":
        return (lambda b: b), _online_states(ctx, gmap, device)
    states = ctx.store.primary(ctx.primary)
    hpos = [states.hidden_layers.index(g) for g in gmap]
    apos = [states.attn_layers.index(g) for g in gmap[1:]]

    def fetch(b: dict[str, Any]) -> dict[str, Any]:
        rb = states.read(b["index"].numpy())
        b["hidden"], b["attn"] = torch.from_numpy(rb.hidden), torch.from_numpy(rb.attn)
        b["state_lengths"] = torch.from_numpy(rb.lengths)
        return b

    def target(b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        width = b["input_ids"].shape[1]
        hidden = pad_hidden(b["hidden"], b["state_lengths"], len(states.hidden_layers), max_length=width)
        scores = pad_attention(b["attn"], b["state_lengths"], len(states.attn_layers), states.num_heads,
                               max_length=width)
        return hidden[:, hpos].float(), scores[:, apos].float()

    return fetch, target


def _online_states(ctx: StudentContext, gmap: list[int], device: torch.device) -> StateTarget:
    """The primary run in the loop: its hidden states g(0..L_S) and masked pre-softmax scores g(1..L_S)."""
    model = bert.load_classifier(teacher_path(ctx, ctx.primary), ctx.store.num_classes).to(device).eval()
    model.requires_grad_(False)

    def target(b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), bert.AttentionScores(model, gmap[1:]) as cap:
            out = model(**bert.model_inputs(model, b), output_hidden_states=True)
            scores = cap.scores(b["attention_mask"])
        hidden = torch.stack([out.hidden_states[g] for g in gmap], dim=1)
        return hidden.float(), torch.stack(scores, dim=1)

    return target


# ----------------------------------------------------------------------------- the student


def _primary_dims(ctx: StudentContext) -> tuple[int, int]:
    """The primary's (hidden size, attention heads): from its stored states, else its config (hash-checked)."""
    if ctx.primary in ctx.store.primaries:
        states = ctx.store.primary(ctx.primary)
        if states.num_heads:
            return states.hidden_size, states.num_heads
    config = bert.load_config(teacher_path(ctx, ctx.primary))
    return int(config.hidden_size), int(config.num_attention_heads)


def _init_student(ctx: StudentContext, tok, fit_size: int | None) -> tuple[TinyBertStudent, dict[str, Any]]:
    """The untrained student: a general TinyBERT checkpoint, or layers g(1..L_S) of a teacher."""
    cfg = ctx.config
    num_labels = get_glue_task(ctx.store.task).num_labels
    depth = int(cfg["student_layers"])
    if cfg["init_from_teacher"]:
        t = int(cfg["init_teacher"] if cfg["init_teacher"] is not None else (ctx.primary or 0))
        teacher = bert.load_classifier(teacher_path(ctx, t), num_labels)
        layers = [g - 1 for g in layer_map(ctx)[1:]]  # student layer m starts as teacher layer g(m)
        net = from_teacher(teacher, layers, fit_size or bert.hidden_size(teacher))
        init = {"init": f"teacher {t}", "init_layers": layers}
    else:
        net, fit_loaded = from_general(cfg["init"], num_labels, fit_size or 1)
        if bert.num_layers(net.bert) != depth:
            raise MtdError(f"init {cfg['init']!r} has {bert.num_layers(net.bert)} layers, student_layers is {depth}: "
                           f"set student_layers={bert.num_layers(net.bert)}")
        init = {"init": cfg["init"], "init_layers": None, "fit_dense_from_init": fit_loaded}
    if net.config.vocab_size < len(tok):
        raise MtdError(f"the student's vocabulary has {net.config.vocab_size} entries, the tokenizer "
                       f"{len(tok)}: they do not belong together")
    return net, init


# ----------------------------------------------------------------------------- stage 2


def _logit_side(ctx: StudentContext, use_kd: bool,
                device: torch.device) -> tuple[Callable[[dict], dict], Callable[[dict], torch.Tensor]]:
    if not use_kd:
        return (lambda b: b), (lambda b: None)
    if ctx.online:
        target = online_target(ctx, False, device)
        return (lambda b: b), (lambda b: target(b)[0])
    store, teachers = ctx.store, list(ctx.teachers)

    def fetch(b: dict[str, Any]) -> dict[str, Any]:
        b["teacher_logits"] = torch.from_numpy(store.mean_logits(teachers, b["index"].numpy()))
        return b

    return fetch, (lambda b: b["teacher_logits"])


def _selection(ctx: StudentContext, net: TinyBertStudent, dev_metric: Callable[[], dict[str, float]],
               total: int) -> tuple[Callable[[int], None], Callable[[], dict[str, float]]]:
    """``--select-on-dev``: dev score every ``eval_step`` steps and at the last; report the best (the reference).

    The best so far is kept beside the run's checkpoint, so a resumed run still knows it.
    """
    every = int(ctx.config["eval_step"])
    path = ctx.checkpoint.with_suffix(".best.json") if ctx.checkpoint else None
    best = {"metric": -math.inf, "step": None}
    if path is not None and path.exists():
        best.update(json.loads(path.read_text()))

    def on_step(step: int) -> None:
        if step % every and step != total:
            return
        metric = dev_metric()["metric"]
        net.train()
        if metric > best["metric"]:  # strict, as the reference's ``result['acc'] > best_dev_acc``
            best.update(metric=metric, step=step)
            if path is not None:
                atomic_write_json(path, best)

    def evaluate() -> dict[str, float]:
        now = dev_metric()
        chosen = now["metric"] if best["step"] is None else best["metric"]
        return {**now, "final_metric": now["metric"], "metric": chosen, "selected_step": best["step"]}

    return on_step, evaluate
