"""Run the paper's sweep: plan (``plan.py``), skip what is done, run the rest on an executor.

Executors: ``local`` (N worker processes, each running many runs in one
interpreter; one GPU each when there are GPUs), ``ray`` (a Ray cluster, or a
local instance) and ``slurm`` (submitit; its local executor for tests).

Safety: a run writes its record atomically at the end, so a crash or kill
loses at most the runs in flight (and those resume from their last epoch
checkpoint). Before running, a worker takes an exclusive ``flock`` on the
run's lock file and re-checks the record: two sweeps on the same folder never
run the same run twice, and a killed worker's lock dies with it. Each start
and finish is appended to ``<out>/sweep-events.jsonl``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from .errors import MtdError
from .plan import Job, plan_sweep
from .record import load_done
from .recipes import get_recipe, student_traits

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "slurm")


@dataclass(frozen=True)
class SweepConfig:
    stores: tuple[str, ...]
    student: str
    pool: tuple[int, ...]
    repeats: int = 3
    base_seed: int = 0
    out: str = "runs"
    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    device: str | None = None
    threads: int | None = None  # torch threads per run (None: cores / workers); fixed for bitwise-equal runs
    teachers_dir: str | None = None  # set: every run computes its teachers online (the store's baseline)


def make_plan(cfg: SweepConfig) -> list[Job]:
    needs_primary, two_stage = student_traits(cfg.student)
    stores = len(cfg.stores)
    if stores not in (1, cfg.repeats):
        raise MtdError(f"{stores} stores for {cfg.repeats} repeats: give one store, or one per repeat")
    return plan_sweep(list(cfg.pool), cfg.student, cfg.repeats, bert_student=needs_primary,
                      two_stage=two_stage, base_seed=cfg.base_seed, stores=stores)


def request_for(job: Job, cfg: SweepConfig):
    from .students import RunRequest

    return RunRequest(store=cfg.stores[job.store_index], student=cfg.student, teachers=job.teachers,
                      primary=job.primary, seed=job.seed, out=cfg.out, overrides=dict(cfg.overrides),
                      data_dir=cfg.data_dir, device=cfg.device, online=cfg.teachers_dir is not None,
                      teachers_dir=cfg.teachers_dir)


# ------------------------------------------------------------------------------------------ one job


def execute(job: Job, cfg: SweepConfig) -> dict[str, Any]:
    """Run one job where this function is called (worker process, Ray task, Slurm job)."""
    from .students import prepare, run_student

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if job.kind == "stage1":
        recipe = get_recipe(cfg.student)
        return {"key": job.key, **recipe.run_stage1(request_for(job, cfg))}
    req = request_for(job, cfg)
    _, _, _, run_id, path = prepare(req)
    if load_done(path) is not None:
        return {"key": job.key, "run_id": run_id, "status": "skipped"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"key": job.key, "run_id": run_id, "status": "locked"}  # another sweep runs it now
        if load_done(path) is not None:
            return {"key": job.key, "run_id": run_id, "status": "skipped"}
        _event(cfg.out, "start", job, run_id)
        rec = run_student(req)
        _event(cfg.out, "finish", job, run_id)
    return {"key": job.key, "run_id": run_id, "status": "done", "metric": rec["metric"], "wall_s": rec["wall_s"]}


def _event(out: str, what: str, job: Job, run_id: str) -> None:
    line = json.dumps({"event": what, "key": job.key, "run_id": run_id, "pid": os.getpid(), "time": time.time()})
    with open(Path(out) / "sweep-events.jsonl", "a") as f:  # O_APPEND: whole lines, no interleaving
        f.write(line + "\n")


# ------------------------------------------------------------------------------------------ executors


def phases(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that others depend on (TinyBERT stage 1) first, then the rest."""
    first = [j for j in jobs if j.kind == "stage1"]
    rest = [j for j in jobs if j.kind != "stage1"]
    return [p for p in (first, rest) if p]


def run_local(jobs: list[Job], cfg: SweepConfig, workers: int) -> list[dict]:
    import torch

    devices = list(range(torch.cuda.device_count())) if cfg.device in (None, "auto", "cuda") else []
    workers = min(workers, len(devices)) if devices else workers
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // workers)
    results = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads, devices)) as ex:
        for phase in phases(jobs):
            futures = [ex.submit(execute, job, cfg) for job in phase]
            results += _collect(as_completed(futures), len(futures), lambda f: f.result())
    return results


def _init_worker(threads: int, devices: list[int]) -> None:
    import multiprocessing

    import torch

    torch.set_num_threads(threads)
    if devices:  # one GPU per worker, by the worker's number in the pool
        ident = multiprocessing.current_process()._identity
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices[(ident[0] - 1) % len(devices) if ident else 0])


def run_ray(jobs: list[Job], cfg: SweepConfig, address: str | None, workers: int) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise MtdError("the ray executor needs Ray: pip install 'mtd-cache[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
             **({} if address else {"num_cpus": workers}))
    gpus = 1 if ray.cluster_resources().get("GPU") else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(execute)
    results = []
    for phase in phases(jobs):
        pending = [remote.remote(job, cfg) for job in phase]
        results += _collect(_ray_done(ray, pending), len(pending), lambda r: r)
    return results


def _ray_done(ray, pending: list) -> Iterable[Any]:
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])


def run_slurm(jobs: list[Job], cfg: SweepConfig, folder: Path, params: dict[str, Any],
              cluster: str | None = None) -> list[dict]:
    try:
        import submitit
    except ImportError:
        raise MtdError("the slurm executor needs submitit: pip install 'mtd-cache[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**params)
    results = []
    for phase in phases(jobs):
        submitted = executor.map_array(execute, phase, [cfg] * len(phase))
        results += _collect(submitted, len(submitted), lambda j: j.result())
    return results


def _collect(items: Iterable[Any], total: int, get: Callable[[Any], dict]) -> list[dict]:
    out = []
    for item in tqdm(items, total=total, desc="sweep", unit="run", disable=None):
        res = get(item)
        out.append(res)
        log.debug("%s: %s", res["key"], res["status"])
    return out


# ------------------------------------------------------------------------------------------ driver


def pending_jobs(jobs: list[Job], cfg: SweepConfig) -> tuple[list[Job], int]:
    """Jobs whose record is not done yet, and how many are done."""
    from .students import prepare

    missing = [s for s in cfg.stores if not Path(s).exists()]
    if missing:  # a plan for stores still to be made (make paper DRY_RUN=1): nothing can be done yet
        log.info("store %s does not exist yet: every job is pending", missing[0])
        return list(jobs), 0
    todo = []
    for job in jobs:
        req = request_for(job, cfg)
        done = get_recipe(cfg.student).stage1_done(req) if job.kind == "stage1" else \
            load_done(prepare(req)[4]) is not None
        if not done:
            todo.append(job)
    return todo, len(jobs) - len(todo)


def estimate(todo: list[Job], cfg: SweepConfig, workers: int) -> str:
    """Estimated wall time of the remaining runs from runs already measured in ``out``."""
    times: dict[int, list[float]] = {}
    for path in Path(cfg.out).glob(f"*/{cfg.student}/*.json"):
        rec = load_done(path)
        if rec is not None:
            times.setdefault(rec["k"], []).append(rec["wall_s"])
    if not times:
        return "no measured runs yet: no estimate"
    overall = statistics.median(t for ts in times.values() for t in ts)
    total = sum(statistics.median(times[j.k]) if j.k in times else overall for j in todo)
    return f"estimated {total / 3600:.2f} h of runs, {total / 3600 / workers:.2f} h on {workers} worker(s)"


def describe(jobs: list[Job]) -> str:
    kinds = {k: sum(j.kind == k for j in jobs) for k in ("stage1", "baseline", "student")}
    return f"{len(jobs)} jobs: {kinds['student']} students, {kinds['baseline']} CE-only, {kinds['stage1']} stage-1"


def run_sweep(cfg: SweepConfig, workers: int = 1, executor: str = "local", address: str | None = None,
              dry_run: bool = False, slurm: dict[str, Any] | None = None) -> list[dict]:
    if executor not in EXECUTORS:
        raise MtdError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    jobs = make_plan(cfg)
    todo, done = pending_jobs(jobs, cfg)
    log.info("%s %s: %s; %d done, %d to run; %s", cfg.stores[0], cfg.student, describe(jobs), done, len(todo),
             estimate(todo, cfg, workers))
    if dry_run or not todo:
        return [{"key": j.key, "status": "planned"} for j in todo]
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if executor == "local":
        return run_local(todo, cfg, workers)
    if executor == "ray":
        return run_ray(todo, cfg, address, workers)
    slurm = dict(slurm or {})
    cluster = slurm.pop("cluster", None)
    return run_slurm(todo, cfg, Path(cfg.out) / "slurm", slurm, cluster)
