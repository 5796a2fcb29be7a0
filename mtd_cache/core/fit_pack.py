"""A pack's training loop: S students trained as one model (``models.stacked.Stacked``), one run each.

The loop ``fit`` runs for one student, for S at once (``students.pack``): one batch, one forward and backward of
the stacked students, one optimizer step acting per student; each student's loss terms, history, evaluation and
death (a NaN or Inf loss fails its run alone) its own. The pack checkpoints in one file per epoch and resumes only
as the same pack (``fit.check_engine``), on the same thread count, with the same RNGs.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import NotACheckpoint, load_state, save_state
from .energy import EnergyMeter
from .fit import check_engine, check_threads, rng_state, set_rng, total_cost, write_csv
from .hashing import canonical_json
from .progress import Progress

log = logging.getLogger(__name__)


@dataclass
class PackFit:
    """What ``fit_pack`` needs: S students trained as one model (``models.stacked.Stacked``), one per run.

    ``step(batch, alive)`` returns each student's loss terms (None for a student that is not alive); the
    students' losses are summed for one backward pass, so each student's gradient is its own loss's. One
    optimizer and scheduler over the stacked parameters act row by row (per student: ``Stacked``).
    ``evaluate(s)`` scores student s. ``kill(s)`` zeroes a student that died (a NaN or Inf loss): its run
    fails, naming the step as a run alone does, and the others train on."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    batches: Callable[[int], Iterable[Any]]
    step: Callable[[Any, list[bool]], list[dict[str, torch.Tensor] | None]]
    members: list[str]  # the students' run ids, in the stack's order
    kill: Callable[[int], None]
    scheduler: Any = None
    evaluate: Callable[[int], dict[str, float]] | None = None
    checkpoint: Path | None = None  # the pack's resume point (its first student's checkpoint path)
    others: list[Path] = field(default_factory=list)  # the other students' checkpoint paths: another engine's
    metrics_csv: list[Path | None] = field(default_factory=list)
    desc: str = "pack"
    on_step: Callable[[int], None] | None = None
    size: Callable[[Any], int | None] = lambda batch: None  # examples in a batch, for the progress
    prior_cost: dict[str, float | None] = field(default_factory=lambda: {"wall_s": 0.0, "energy_j": 0.0})
    dead: dict[int, str] = field(default_factory=dict)  # student -> why its run failed
    predictions: dict[int, np.ndarray] = field(default_factory=dict)
    prediction_labels: dict[int, np.ndarray | None] = field(default_factory=dict)

    def alive(self) -> list[bool]:
        return [s not in self.dead for s in range(len(self.members))]


def fit_pack(job: PackFit, device: torch.device, meter: EnergyMeter | None = None) -> list[list[dict[str, float]]]:
    """Train a pack; returns each student's rows of metrics per epoch (a dead student's stop at its death).

    Checkpoints the whole pack every epoch in one file (every student's rows, the optimizer's and scheduler's
    state, the dead, the RNGs), so a killed pack resumes exactly, and only as the same pack."""
    start, histories = _resume_pack(job, device)
    for epoch in range(start, job.epochs):
        if all(s in job.dead for s in range(len(job.members))):
            break
        t0 = time.perf_counter()
        rows = _train_pack_epoch(job, epoch, device)
        last = epoch == job.epochs - 1
        for s, row in enumerate(rows):
            if s in job.dead:
                continue
            if job.evaluate is not None and last:
                t_eval = time.perf_counter()
                row.update(_evaluate_member(job, s))
                row["eval_s"] = time.perf_counter() - t_eval
            row.update(epoch=epoch + 1, epoch_s=time.perf_counter() - t0, lr=job.optimizer.param_groups[0]["lr"])
            histories[s].append(row)
        level = logging.INFO if last or not sys.stderr.isatty() else logging.DEBUG
        live = [s for s in range(len(job.members)) if s not in job.dead]
        log.log(level, "%s epoch %d/%d: %d students, loss %s", job.desc, epoch + 1, job.epochs, len(live),
                " ".join(f"{histories[s][-1]['loss']:.4g}" for s in live))
        _save_pack(job, epoch + 1, histories, meter)
        for s in live:
            write_csv(job.metrics_csv[s] if s < len(job.metrics_csv) else None, histories[s])
    if start == job.epochs and job.evaluate is not None:  # resumed after the last epoch: nothing evaluated yet
        for s in range(len(job.members)):
            if s not in job.dead:
                _evaluate_member(job, s)
    return histories


def _evaluate_member(job: PackFit, s: int) -> dict[str, float]:
    metrics = dict(job.evaluate(s))
    predictions, labels = metrics.pop("predictions", None), metrics.pop("labels", None)
    if predictions is not None:
        job.predictions[s] = np.asarray(predictions)
        job.prediction_labels[s] = None if labels is None else np.asarray(labels)
    return metrics


def _train_pack_epoch(job: PackFit, epoch: int, device: torch.device) -> list[dict[str, float]]:
    """One epoch of a pack. Nothing in a step waits for the device: each step's loss terms are summed on the device
    and copied to pinned host memory without a wait, and checked (NaN or Inf: the student dies, ``kill``) one step
    later, once that copy is done, while the device runs the next step. A student's NaN stays in its own rows (its
    loss enters the sum, whose gradient is 1 for every student) until its rows are zeroed."""
    job.model.train()
    n = len(job.members)
    keys: list[str] = []
    acc: torch.Tensor | None = None  # (students, terms) summed on the device
    count, pending, shown = 0, None, None
    batches = job.batches(epoch)
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = Progress(total, f"{job.desc} epoch {epoch + 1}/{job.epochs}", unit="step")
    for batch in batches:
        alive = job.alive()
        if not any(alive):
            break
        terms = job.step(batch, alive)
        step_no = epoch * (total or 0) + count
        live = [s for s in range(n) if alive[s]]
        if not keys:
            keys = list(dict.fromkeys(k for s in live for k in terms[s]))
            acc = torch.zeros((n, len(keys)), device=device)
            nothing = torch.zeros((), device=device)
        values = torch.stack([torch.stack([terms[s][k].detach().float() if k in terms[s] else nothing
                                           for k in keys]) for s in live])
        acc[live] += values
        loss = terms[live[0]]["loss"]
        for s in live[1:]:
            loss = loss + terms[s]["loss"]
        job.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        shown = _check_pack(job, pending) or shown  # the step before: done on the device by now
        pending = (step_no, live, _to_host(values[:, 0], device))
        job.optimizer.step()
        if job.scheduler is not None:
            job.scheduler.step()
        count += 1
        if job.on_step is not None:
            job.on_step(step_no + 1)
        bar.update(1, examples=job.size(batch), **({"loss": shown} if shown is not None else {}))
    _check_pack(job, pending)
    bar.close()
    sums = acc.tolist() if acc is not None else [[] for _ in range(n)]
    return [{k: v / max(count, 1) for k, v in zip(keys, sums[s], strict=True)} for s in range(n)]


def _to_host(values: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, Any]:
    """``values`` on their way to the host: a pinned copy and the event that says it is done (CPU: at once)."""
    if device.type != "cuda":
        return values, None
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _check_pack(job: PackFit, pending: tuple | None) -> float | None:
    """The losses of a step gone by: a student whose loss is NaN or Inf dies (its rows zeroed by ``kill``, its run
    failed naming the step, as a run alone's would); returns the living students' mean loss, for the progress."""
    if pending is None:
        return None
    step_no, live, (host, event) = pending
    if event is not None:
        event.synchronize()
    values = host.tolist()
    for s, v in zip(live, values, strict=True):
        if not math.isfinite(v) and s not in job.dead:
            job.dead[s] = f"loss is {v} at step {step_no}; stopping the run"
            log.error("%s: student %d (%s) died: %s; the others train on", job.desc, s, job.members[s][:12],
                      job.dead[s])
            job.kill(s)
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _pack_identity(job: PackFit) -> str:
    return canonical_json({"pack": list(job.members)})


def _save_pack(job: PackFit, epoch: int, histories: list[list[dict]], meter: EnergyMeter | None) -> None:
    if job.checkpoint is None:
        return
    state = {
        "identity": _pack_identity(job), "epoch": epoch, "histories": histories,
        "engine": {"name": "pack", "students": len(job.members), "members": list(job.members)},
        "dead": {str(s): why for s, why in job.dead.items()},
        "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
        "scheduler": job.scheduler.state_dict() if job.scheduler is not None else None,
        "threads": torch.get_num_threads(),
        "cost": total_cost(job, meter.peek()) if meter is not None else None, "rng": rng_state(),
    }
    save_state(job.checkpoint, state)


def _resume_pack(job: PackFit, device: torch.device) -> tuple[int, list[list[dict]]]:
    fresh = [[] for _ in job.members]
    for other in job.others:  # a student's checkpoint of its own: a run alone began it
        if other.exists() or other.is_symlink():
            try:
                check_engine(other, load_state(other), job.members)
            except NotACheckpoint:
                pass
    if job.checkpoint is None or not (job.checkpoint.exists() or job.checkpoint.is_symlink()):
        return 0, fresh
    try:
        state = load_state(job.checkpoint)
    except NotACheckpoint as exc:
        log.warning("%s: ignored, %s starts from the beginning", exc, job.desc)
        return 0, fresh
    check_engine(job.checkpoint, state, job.members)
    check_threads(job.checkpoint, state, device)
    try:
        job.model.load_state_dict(state["model"])
        job.optimizer.load_state_dict(state["optimizer"])
        if job.scheduler is not None and state["scheduler"] is not None:
            job.scheduler.load_state_dict(state["scheduler"])
        set_rng(state["rng"])
        histories = [list(h) for h in state["histories"]]
        job.dead = {int(s): str(why) for s, why in (state.get("dead") or {}).items()}
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise NotACheckpoint(f"{job.checkpoint} names this pack but does not fit it "
                             f"({' '.join(str(exc).split())[:120]}): remove it, and the pack starts from the "
                             "beginning") from None
    job.prior_cost = state.get("cost") or {"wall_s": 0.0, "energy_j": None}
    log.info("%s: resumed from %s after epoch %d", job.desc, job.checkpoint, state["epoch"])
    return int(state["epoch"]), histories
