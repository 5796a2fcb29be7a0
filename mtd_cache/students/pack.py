"""A pack: several students of one recipe trained as one model in one process (``mtd-sweep --students-per-process``).

The students of one repeat of a sweep share everything their training starts from: the recipe's settings,
the seed (so the initial weights and the data order), the store and its data. They differ in their teachers
only. A pack trains S of them together (``models.stacked.Stacked``): one batch of images and views on the
device, one gather of the S students' targets (``TeacherStore.mean_logits_many``), one forward and backward of
the S stacked models, one optimizer step acting per student. Each student keeps its own loss terms (its
``Objective`` and ``TeacherSelection``, exactly a run alone's), BatchNorm statistics, optimizer state and
record: the same run id as alone (the configuration is the same), its engine in the record.

``pack_key`` says which runs may share a pack (None: a run that trains alone, and why); ``packs`` groups a
plan's runs; ``execute_pack`` runs a pack under its students' locks, as ``run.execute_run`` runs one.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from typing import Any

from ..core.energy import EnergyMeter
from ..core.errors import MtdError
from ..core.fit import Fit, total_cost
from ..core.fit_pack import PackFit, fit_pack
from ..core.locks import file_lock
from ..core.losses import NonFiniteLossError
from ..core.runtime import seed_everything, utc_now
from ..core.safe_files import check_targets
from .recipes import get_recipe
from .run import PlannedRun, RunRequest, _train, finish, model_path

log = logging.getLogger(__name__)

MAX_STUDENTS = 64  # --students-per-process: more than a GPU holds of even the smallest student


def packable(req: RunRequest) -> str | None:
    """None when ``req`` can share a pack, else why it trains alone (one line)."""
    recipe = get_recipe(req.student)
    if not hasattr(recipe, "build_pack"):
        return f"{req.student} students train one per process (their recipe, {recipe.__name__.rsplit('.', 1)[-1]}, " \
               "has no multi-student engine: image students have)"
    if req.online:
        return "runs with their teachers online train one per process"
    if req.kind != "student":
        return f"{req.kind} runs train one per process"
    if recipe.Settings.resolve(req.overrides).settings.divergence == "taid":
        return "runs with divergence=taid train one per process (each student's schedule is its own state)"
    return None


def pack_key(req: RunRequest) -> str | None:
    """What runs sharing a pack must share (every field of the request but the teachers and where the record and
    weights go), as one string; None for a run that trains alone (``packable``)."""
    if packable(req) is not None:
        return None
    shared = {"store": req.store, "student": req.student, "seed": req.seed, "overrides": req.overrides,
              "data_dir": req.data_dir, "device": req.device, "out": req.out, "force": req.force,
              "experiment_stores": list(req.experiment_stores), "allow_unverified": req.allow_unverified}
    return json.dumps(shared, sort_keys=True, default=str)


def packs(requests: list[RunRequest], size: int) -> list[list[int]]:
    """The plan's runs (by position) in packs of at most ``size``: runs of one ``pack_key`` in plan order, cut
    into packs; a run that trains alone is a pack of one. Packs come in the order of their first run."""
    if size < 1:
        raise MtdError(f"--students-per-process {size}: expected at least 1")
    groups: dict[Any, list[int]] = {}
    for i, req in enumerate(requests):
        key = pack_key(req) if size > 1 else None
        groups.setdefault(key if key is not None else ("alone", i), []).append(i)
    out = [g[a:a + size] for g in groups.values() for a in range(0, len(g), size)]
    return sorted(out, key=lambda p: p[0])


def execute_pack(planned: list[PlannedRun], wait: bool = False) -> list[dict[str, Any] | Exception | None]:
    """Each run's record, in order: found done ("reused"), trained here with the others in one pack, None when
    another process holds its lock (``wait`` off), or the exception its run failed with (a student whose loss
    turned NaN fails alone: the others finish). A pack left with one student trains it as a run alone."""
    keys = {pack_key(p.request) for p in planned}
    if len(planned) > 1 and (None in keys or len(keys) != 1):
        raise MtdError("these runs cannot share a pack: " + (next((w for p in planned if (w := packable(p.request))),
                                                                  None) or "they differ in more than their teachers"))
    for p in planned:
        check_targets(p.request.out, [p.record, p.lock, p.checkpoint, p.metrics_csv,
                                      p.record.with_suffix(".predictions.npz"), model_path(p.record)])
    results: list[dict[str, Any] | Exception | None] = [None] * len(planned)
    with ExitStack() as locks:
        todo = []
        for i, p in enumerate(planned):
            if (done := p.done()) is not None:
                results[i] = {**done, "reused": True}
            elif locks.enter_context(file_lock(p.lock, wait)):
                if (done := p.done()) is not None:  # finished while this waited
                    results[i] = {**done, "reused": True}
                else:
                    todo.append(i)
        if len(todo) == 1:
            results[todo[0]] = _train(planned[todo[0]])
        elif todo:
            for i, rec in zip(todo, train_pack([planned[i] for i in todo]), strict=True):
                results[i] = rec
    return results


def train_pack(planned: list[PlannedRun]) -> list[dict[str, Any] | Exception]:
    """Train S compatible runs as one pack (locks held by the caller); each one's record, or its failure."""
    first = planned[0]
    started = utc_now()
    seed_everything(first.request.seed)  # the students' shared initial weights, as each alone would draw them
    ctxs = [p.context() for p in planned]
    job: PackFit = first.recipe.build_pack(ctxs)
    job.members = [p.run_id for p in planned]
    job.checkpoint, job.others = first.checkpoint, [p.checkpoint for p in planned[1:]]
    job.metrics_csv = [p.metrics_csv for p in planned]
    with EnergyMeter() as meter:
        histories = fit_pack(job, ctxs[0].device, meter)
    cost = total_cost(job, meter.reading)
    n = len(planned)
    engine = {"name": "pack", "students": n, "pack": job.members, "pack_wall_s": cost["wall_s"],
              "pack_energy_j": cost["energy_j"]}
    share = {"wall_s": cost["wall_s"] / n, "energy_j": None if cost["energy_j"] is None else cost["energy_j"] / n,
             "wall_s_this_part": meter.reading.wall_s / n, "energy_sources": meter.reading.sources, "engine": engine}
    out: list[dict[str, Any] | Exception] = []
    for s, (p, ctx) in enumerate(zip(planned, ctxs, strict=True)):
        if s in job.dead:
            out.append(NonFiniteLossError(job.dead[s]))
            continue
        alone = Fit(model=job.model.member(s), optimizer=job.optimizer, epochs=job.epochs, batches=job.batches,
                    step=lambda batch: {}, predictions=job.predictions.get(s),
                    prediction_labels=job.prediction_labels.get(s))
        out.append(finish(p, ctx, alone, histories[s], share, started))
    if job.checkpoint is not None and job.checkpoint.exists():
        job.checkpoint.unlink()  # every record written: the pack's resume point is spent
    return out


def students_that_fit(peak_one: int, peak_two: int, free: int, limit: int = MAX_STUDENTS) -> int:
    """How many students of a pack fit a device's ``free`` bytes, from the peak memory of packs of one and two
    (calibration steps): the first student costs ``peak_one``, each further one ``peak_two - peak_one``; 10% of
    the memory is left to the allocator's fragments. At least 1, at most ``limit``."""
    each = max(peak_two - peak_one, 1)
    room = int(free * 0.9) - peak_one
    return max(1, min(limit, 1 + room // each))



def peak_memory(planned: list[PlannedRun], steps: int = 2) -> int | None:
    """The GPU bytes a few training steps of these runs (one alone, or a pack) allocate at their peak, built
    exactly as they will train (model, data, optimizer, targets); None off CUDA (nothing to measure)."""
    import torch

    dev = planned[0].context().device
    if dev.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    _steps(planned, steps)  # its model, data and optimizer freed on return
    peak = torch.cuda.max_memory_allocated(dev) - base
    torch.cuda.empty_cache()
    return int(peak)


def _steps(planned: list[PlannedRun], steps: int) -> None:
    """A few training steps of the runs (one alone, or a pack), built as they will train."""
    seed_everything(planned[0].request.seed)
    if len(planned) == 1:
        job: Any = planned[0].impl.build(planned[0], planned[0].context())
        loss_of = job.step
    else:
        job = planned[0].recipe.build_pack([p.context() for p in planned])
        alive = [True] * len(planned)

        def loss_of(batch):
            return {"loss": sum(t["loss"] for t in job.step(batch, alive))}

    for _, batch in zip(range(steps), job.batches(0), strict=False):
        job.optimizer.zero_grad(set_to_none=True)
        loss_of(batch)["loss"].backward()
        job.optimizer.step()


def auto_size(group: list[PlannedRun], share: int = 1) -> tuple[int, str]:
    """``--students-per-process auto``: as many students of ``group`` (compatible runs) as fit the GPU's free
    memory split over ``share`` workers, from the measured peaks of packs of one and two; on the CPU one (a pack
    there is no faster than its students one after another: the convolutions are compute-bound)."""
    import torch

    if len(group) < 2:
        return 1, "one student per process (no two runs share a pack)"
    one = peak_memory(group[:1])
    if one is None:
        return 1, "one student per process on the CPU (a pack there trains no faster: its convolutions are " \
                  "compute-bound)"
    two = peak_memory(group[:2])
    free = torch.cuda.mem_get_info(group[0].context().device)[0] // max(share, 1)
    size = students_that_fit(one, two or one, free, min(MAX_STUDENTS, len(group)))
    return size, (f"{size} students per process (one peaks at {one / 2**20:.0f} MiB, each further one adds "
                  f"{max((two or one) - one, 0) / 2**20:.0f} MiB; {free / 2**30:.1f} GiB free per worker)")
