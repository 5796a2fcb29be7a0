"""The one training loop, shared by teachers and every student recipe.

A recipe hands ``fit`` its model, optimizer, per-step scheduler, a function
that yields an epoch's batches and a step function returning a dict of loss
terms (``loss`` plus whatever it likes: ``ce``, ``kd``, ``cos``, ``att``, ``rep``…);
the loop logs every key it gets. It checkpoints every epoch (model, optimizer,
scheduler, scaler, epoch, RNG states, config, store fingerprint; safetensors plus
JSON, never a pickle: ``checkpoints.py``) so a killed run resumes exactly, fails
fast on a NaN or Inf loss naming the step, and writes per-epoch metrics to a CSV that pandas reads back.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import NotACheckpoint, load_state, save_state
from .energy import EnergyMeter, EnergyReading
from .errors import MtdError
from .hashing import canonical_json
from .losses import check_finite
from .progress import Progress
from .safe_files import atomic_path

log = logging.getLogger(__name__)

StepFn = Callable[[Any], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Accumulated:
    """One optimizer step over several micro-batches (gradient accumulation): ``fit`` runs ``step`` on each part,
    backpropagates its loss over the number of parts before the next, and logs the parts' mean terms."""

    parts: tuple[Any, ...]

    def __len__(self) -> int:  # examples, for the progress bar
        return sum(_batch_size(p) or 0 for p in self.parts)


@dataclass
class Fit:
    """What ``fit`` needs from a recipe. ``scheduler`` steps once per optimizer step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    batches: Callable[[int], Iterable[Any]]  # epoch -> that epoch's batches
    step: StepFn
    scheduler: Any = None
    evaluate: Callable[[], dict[str, float]] | None = None  # called after each epoch when eval_every divides it
    eval_every: int = 0  # 0: evaluate after the last epoch only
    checkpoint: Path | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # config + fingerprint a checkpoint must match
    metrics_csv: Path | None = None
    desc: str = "train"
    autocast_dtype: torch.dtype | None = None  # bf16/fp16 mixed precision on GPU
    grad_clip: float | None = None
    clip_per_parameter: bool = False  # BertAdam's clipping: each parameter's gradient norm to grad_clip on its own
    on_step: Callable[[int], None] | None = None  # called after every optimizer step with the step count (from 1)
    # what the parts of this run before its resume cost ({"wall_s", "energy_j"}), set by ``fit`` on resuming
    prior_cost: dict[str, float | None] = field(default_factory=lambda: {"wall_s": 0.0, "energy_j": 0.0})
    # the last evaluation's predictions (class ids) and the labels they were scored against, when ``evaluate``
    # returns them under "predictions" and "labels"
    predictions: np.ndarray | None = None
    prediction_labels: np.ndarray | None = None
    # the objective's own state across steps (TAID's schedule: ``state_dict``, ``load_state_dict``, ``total``), kept
    # in every checkpoint; ``total`` is set to the run's steps before the first
    state: Any = None


def fit(job: Fit, device: torch.device, meter: EnergyMeter | None = None) -> list[dict[str, float]]:
    """Train ``job.model``; returns one row of metrics per epoch (also written to ``metrics_csv``).

    With ``meter`` (running around this call), each checkpoint records the run's cost so far, so a
    resumed run's cost is the sum of its parts (``job.prior_cost`` holds what came before the resume).
    """
    scaler = torch.amp.GradScaler(device.type, enabled=job.autocast_dtype == torch.float16)
    if job.state is not None:
        first = job.batches(0)
        job.state.total = job.epochs * (len(first) if hasattr(first, "__len__") else 0)
    start, history = _resume(job, scaler, device)
    for epoch in range(start, job.epochs):
        t0 = time.perf_counter()
        row = _train_epoch(job, epoch, device, scaler)
        last = epoch == job.epochs - 1
        if job.evaluate is not None and (last or (job.eval_every and (epoch + 1) % job.eval_every == 0)):
            t_eval = time.perf_counter()
            row.update(_evaluate(job))
            row["eval_s"] = time.perf_counter() - t_eval  # epoch_s includes it
        row.update(epoch=epoch + 1, epoch_s=time.perf_counter() - t0,
                   lr=job.optimizer.param_groups[0]["lr"])
        history.append(row)
        level = logging.INFO if last or not sys.stderr.isatty() else logging.DEBUG  # a log gets every epoch
        log.log(level, "%s epoch %d/%d: %s", job.desc, epoch + 1, job.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch",)))
        _save_checkpoint(job, scaler, epoch + 1, history, meter)
        write_csv(job.metrics_csv, history)
    if start == job.epochs and job.evaluate is not None:  # resumed after the last epoch: nothing evaluated yet
        _evaluate(job)
    return history


def _evaluate(job: Fit) -> dict[str, float]:
    """The metrics of ``job.evaluate()``; its predictions, if any, kept on the job (not in the history)."""
    metrics = dict(job.evaluate())
    predictions, labels = metrics.pop("predictions", None), metrics.pop("labels", None)
    if predictions is not None:
        job.predictions = np.asarray(predictions)
        job.prediction_labels = None if labels is None else np.asarray(labels)
    return metrics


def _train_epoch(job: Fit, epoch: int, device: torch.device, scaler: torch.amp.GradScaler) -> dict[str, float]:
    job.model.train()
    sums: dict[str, float] = {}
    count = 0
    batches = job.batches(epoch)
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = Progress(total, f"{job.desc} epoch {epoch + 1}/{job.epochs}", unit="step")
    for batch in batches:
        step_no = epoch * (total or 0) + count
        parts = batch.parts if isinstance(batch, Accumulated) else (batch,)
        job.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        for part in parts:  # gradient accumulation: each part's loss / len(parts), backward before the next
            with torch.autocast(device.type, dtype=job.autocast_dtype or torch.float32,
                                enabled=job.autocast_dtype is not None):
                got = job.step(part)
            check_finite(got["loss"], step_no)
            scaler.scale(got["loss"] / len(parts)).backward()
            for k, v in got.items():
                terms[k] = terms.get(k, 0.0) + v.detach() / len(parts)
        if job.grad_clip:
            scaler.unscale_(job.optimizer)
            if job.clip_per_parameter:
                for p in job.model.parameters():
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, job.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(job.model.parameters(), job.grad_clip)
        scaler.step(job.optimizer)
        scaler.update()
        if job.scheduler is not None:
            job.scheduler.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        count += 1
        if job.on_step is not None:
            job.on_step(step_no + 1)
        bar.update(1, examples=_batch_size(batch), loss=sums["loss"] / count)
    bar.close()
    return {k: v / max(count, 1) for k, v in sums.items()}


def _batch_size(batch: Any) -> int | None:
    """Examples in a batch: a dict's ``index`` (text), a tuple's first tensor (images: indices, views)."""
    if isinstance(batch, Accumulated):
        return len(batch)
    if isinstance(batch, (np.ndarray, torch.Tensor)):  # a batch of example indices
        return len(batch)
    first = batch.get("index") if isinstance(batch, dict) else batch[0] if isinstance(batch, (tuple, list)) \
        and batch else None
    return len(first) if hasattr(first, "__len__") else None


def _identity_key(job: Fit) -> str:
    return canonical_json(job.identity)


def total_cost(job: Fit, reading: EnergyReading) -> dict[str, float | None]:
    """This part's reading plus the parts before a resume: unknown energy in any part is unknown overall."""
    prior = job.prior_cost
    energy = None if reading.energy_j is None or prior["energy_j"] is None else reading.energy_j + prior["energy_j"]
    return {"wall_s": reading.wall_s + prior["wall_s"], "energy_j": energy}


def _save_checkpoint(job: Fit, scaler: torch.amp.GradScaler, epoch: int, history: list[dict],
                     meter: EnergyMeter | None) -> None:
    if job.checkpoint is None:
        return
    state = {
        "identity": _identity_key(job), "epoch": epoch, "history": history,
        "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
        "scheduler": job.scheduler.state_dict() if job.scheduler is not None else None,
        "scaler": scaler.state_dict(), "threads": torch.get_num_threads(),
        "objective": job.state.state_dict() if job.state is not None else None,
        "cost": total_cost(job, meter.peek()) if meter is not None else None,
        "rng": rng_state(),
    }
    save_state(job.checkpoint, state)  # safetensors + JSON: no pickle (checkpoints.py)


def _resume(job: Fit, scaler: torch.amp.GradScaler, device: torch.device) -> tuple[int, list[dict]]:
    if job.checkpoint is None or not (job.checkpoint.exists() or job.checkpoint.is_symlink()):
        return 0, []
    try:
        state = load_state(job.checkpoint)
    except NotACheckpoint as exc:  # only a resume point: never loaded, the run starts over (and replaces it)
        log.warning("%s: ignored, %s starts from the beginning", exc, job.desc)
        return 0, []
    check_engine(job.checkpoint, state, None)
    if state.get("identity") != _identity_key(job):
        log.warning("ignoring checkpoint %s: it belongs to another configuration", job.checkpoint)
        return 0, []
    check_threads(job.checkpoint, state, device)
    try:
        _restore(job, scaler, state)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # ours in form, not in content
        raise NotACheckpoint(f"{job.checkpoint} names this run but does not fit it ({' '.join(str(exc).split())[:120]}"
                             "): remove it, and the run starts from the beginning") from None
    job.prior_cost = state.get("cost") or {"wall_s": 0.0, "energy_j": None}  # older checkpoints: energy unknown
    log.info("%s: resumed from %s after epoch %d", job.desc, job.checkpoint, state["epoch"])
    return state["epoch"], list(state["history"])


def check_threads(path: Path, state: dict[str, Any], device: torch.device) -> None:
    """A CPU checkpoint resumed on another thread count is refused: it would compute other numbers."""
    threads, now = state.get("threads"), torch.get_num_threads()
    if device.type == "cpu" and threads is not None and threads != now:
        raise MtdError(f"{path} was written by a run on {threads} CPU threads, this process has {now}: "
                       f"resumed, it would compute other numbers than it began with; run it with {threads} threads "
                       f"(OMP_NUM_THREADS={threads}, or mtd-sweep --threads {threads}), or remove the checkpoint")


def engine_of(state: dict[str, Any]) -> dict[str, Any]:
    """What trained a checkpoint: ``{"name": "single"}`` (one student per process; every checkpoint written
    before packs) or ``{"name": "pack", "students": S, "members": [run ids]}`` (``fit_pack``)."""
    return state.get("engine") or {"name": "single"}


def check_engine(path: Path, state: dict[str, Any], members: list[str] | None) -> None:
    """A checkpoint resumed by another engine is refused, as across thread counts: a pack's students and a run
    alone sum their convolutions in other orders. ``members``: the pack resuming it (None: a run alone)."""
    engine = engine_of(state)
    if engine["name"] == "pack" and members is None:
        n = engine.get("students")
        raise MtdError(f"{path} was written by a pack of {n} students trained as one (mtd-sweep "
                       f"--students-per-process {n}); resumed alone, this run would compute other numbers than it "
                       f"began with: run the sweep again with --students-per-process {n}, or remove the checkpoint")
    if members is not None and engine["name"] != "pack":
        raise MtdError(f"{path} was written by this run alone (one student per process); resumed in a pack of "
                       f"{len(members)} it would compute other numbers than it began with: run it with "
                       "--students-per-process 1, or remove the checkpoint")
    if members is not None and list(engine.get("members") or []) != list(members):
        n = engine.get("students")
        raise MtdError(f"{path} was written by another pack ({n} students, another membership): rerun the sweep "
                       f"with the --students-per-process it ran with ({n}), or remove the checkpoint")


def _restore(job: Fit, scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Every part of a checkpoint's state into the job, the process's RNGs included."""
    job.model.load_state_dict(state["model"])
    job.optimizer.load_state_dict(state["optimizer"])
    if job.scheduler is not None and state["scheduler"] is not None:
        job.scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if job.state is not None:
        job.state.load_state_dict(state["objective"])
    set_rng(state["rng"])


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def write_csv(path: Path | None, history: list[dict]) -> None:
    if path is None or not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)


def remove_checkpoint(job: Fit) -> None:
    """Drop the resume checkpoint once the run's result is safely written."""
    if job.checkpoint is not None and job.checkpoint.exists():
        os.remove(job.checkpoint)
