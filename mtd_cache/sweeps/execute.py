"""Run the paper's sweep: plan (``plan.py``), skip what is done, run the rest on an executor.

Executors (``executors.py``): ``local`` (N worker processes, each running many runs in
one interpreter; one GPU each when there are GPUs; a worker killed by the system is
a failed job, retried once), ``ray`` (a Ray cluster, or a local instance) and
``slurm`` (submitit; ``--slurm-local``: its local executor). All three share one
scheduler that honours ``Job.depends_on``, and every job runs through the same run
machinery (``students.run``), whatever its kind.

Safety: a run writes its record atomically at the end, so a crash or kill
loses at most the runs in flight (and those resume from their last epoch
checkpoint). Before running, a worker takes an exclusive ``flock`` on the
run's lock file and re-checks the record: two sweeps on the same folder never
run the same run twice, and a killed worker's lock dies with it. Each start
and finish is appended to ``<out>/sweep-events.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import EXIT_INCOMPLETE, MtdError
from ..core.safe_files import append_line, check_target
from ..store.tokens import open_store
from ..store.validate import refuse_unfinished
from ..students.pack import MAX_STUDENTS, auto_size, execute_pack, packable, packs, peak_memory
from ..students.recipes import get_recipe, student_traits
from ..students.run import PlannedRun, RunRequest, execute_run, plan_run
from .estimate import estimate_lines
from .executors import check_slurm, run_local, run_ray, run_slurm, threads_per_run
from .plan import Job, Pack, Unit, arrange, first_overrides, members, plan_sweep, rule_overrides, with_rules
from .records import dead_of

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
    save_models: bool = False  # keep every student's weights beside its record (--save-models)
    order: str = "plan"  # "plan" (k ascending) or "shuffled" (``plan.arrange``)
    twins_dir: str | None = None  # set: each student job of the first twin_repeats repeats gets an online twin
    twin_repeats: int | None = None
    allow_unverified: bool = False  # train on stores without a seal (--allow-unverified); recorded, not in run ids
    rules: tuple[str, ...] = ()  # --rules: the plan once per KD rule (``plan.with_rules``), one experiment each
    # students trained as one model per process (``students.pack``): 1, a number, or "auto" (as many as fit)
    students_per_process: int | str = 1
    gpus_per_run: float | None = None  # Ray: the fraction of a GPU each run (or pack) asks for; None: 1


def make_plan(cfg: SweepConfig) -> list[Job]:
    needs_primary, two_stage = student_traits(cfg.student, first_overrides(cfg))
    stores = len(cfg.stores)
    if stores not in (1, cfg.repeats):
        raise MtdError(f"{stores} stores for {cfg.repeats} repeats: give one store, or one per repeat")
    jobs = plan_sweep(list(cfg.pool), cfg.student, cfg.repeats, bert_student=needs_primary,
                      two_stage=two_stage, base_seed=cfg.base_seed, stores=stores)
    return arrange(with_rules(jobs, cfg.rules), cfg.order, cfg.twins_dir is not None, cfg.twin_repeats,
                   cfg.base_seed)



def request_for(job: Job, cfg: SweepConfig) -> RunRequest:
    teachers_dir = cfg.twins_dir if job.online else cfg.teachers_dir
    return RunRequest(store=cfg.stores[job.store_index], student=cfg.student, teachers=job.teachers,
                      primary=job.primary, seed=job.seed, out=cfg.out,
                      overrides=rule_overrides(cfg.overrides, job.rule) if job.rule else first_overrides(cfg),
                      data_dir=cfg.data_dir, device=cfg.device, online=teachers_dir is not None,
                      teachers_dir=teachers_dir, kind="stage1" if job.kind == "stage1" else "student",
                      save_model=cfg.save_models, allow_unverified=cfg.allow_unverified,
                      experiment_stores=_fingerprints(cfg.stores) if len(cfg.stores) > 1 else ())


def _fingerprints(stores: tuple[str, ...]) -> tuple[str, ...]:
    """The sorted fingerprints of a sweep's repeat stores: one experiment over all of them."""
    out = []
    for path in stores:
        with open_store(path) as s:  # opened once per process and file version
            out.append(s.fingerprint)
    return tuple(sorted(out))


# ------------------------------------------------------------------------------------------ one job


def execute(job: Unit, cfg: SweepConfig, wait: bool = False) -> dict[str, Any] | list[dict[str, Any]]:
    """Run one job (or a pack of jobs: one result each) where this function is called (worker process, Ray
    task, Slurm job).

    A run another process holds is "locked" (``wait`` off) or waited for; a run that fails is reported
    as "failed" with its one-line reason, and the sweep goes on with the others.
    """
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if isinstance(job, Pack):
        return _execute_pack(job, cfg, wait)
    base: dict[str, Any] = {"key": job.key, "run_id": None}
    try:
        planned = plan_run(request_for(job, cfg))
        base["run_id"] = planned.run_id
        if planned.done() is not None:
            return {**base, "status": "skipped"}
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        rec = execute_run(planned, wait=wait, on_start=lambda: _event(cfg.out, "start", job, planned.run_id))
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others; named at the end
        log.error("%s failed: %s", job.key, " ".join(str(exc).split()), exc_info=not isinstance(exc, MtdError))
        _event(cfg.out, "failed", job, base["run_id"] or "")
        return {**base, "status": "failed", "error": " ".join(str(exc).split()) or type(exc).__name__}
    return _outcome(job, cfg, planned, rec)


def _outcome(job: Job, cfg: SweepConfig, planned: PlannedRun, rec: dict[str, Any] | Exception | None
             ) -> dict[str, Any]:
    """A job's result from what its run gave: its record, None (locked), or the exception it failed with."""
    base = {"key": job.key, "run_id": planned.run_id}
    if isinstance(rec, Exception):
        log.error("%s failed: %s", job.key, " ".join(str(rec).split()))
        _event(cfg.out, "failed", job, planned.run_id)
        return {**base, "status": "failed", "error": " ".join(str(rec).split()) or type(rec).__name__}
    if rec is None:
        return {**base, "status": "locked"}  # another sweep runs it now
    if rec.get("reused"):
        return {**base, "status": "skipped"}
    _event(cfg.out, "finish", job, planned.run_id)
    predictions = rec.get("predictions")
    dead = dead_of(rec, str(planned.record.parent / predictions) if predictions else None)
    return {**base, "status": "done", "metric": rec["metric"], "metric_name": rec.get("metric_name"),
            "wall_s": rec["wall_s"], "dead": dead}


def _execute_pack(pack: Pack, cfg: SweepConfig, wait: bool) -> list[dict[str, Any]]:
    """A pack's jobs trained as one model (``students.pack.execute_pack``); one result per job, in order. A job
    that cannot be planned fails alone, the others train as a smaller pack."""
    planned: list[PlannedRun | None] = []
    results: list[dict[str, Any] | None] = []
    for job in pack.jobs:
        try:
            planned.append(plan_run(request_for(job, cfg)))
            results.append(None)
        except Exception as exc:  # noqa: BLE001 - named at the end, as a job alone's
            log.error("%s failed: %s", job.key, " ".join(str(exc).split()), exc_info=not isinstance(exc, MtdError))
            planned.append(None)
            results.append({"key": job.key, "run_id": None, "status": "failed",
                            "error": " ".join(str(exc).split()) or type(exc).__name__})
    todo = [i for i, p in enumerate(planned) if p is not None]
    if todo:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        _event(cfg.out, "start", pack, "")  # the pack's process, for a worker killed under it
        for i in todo:
            _event(cfg.out, "start", pack.jobs[i], planned[i].run_id)
        try:
            recs: list[Any] = execute_pack([planned[i] for i in todo], wait=wait)
        except Exception as exc:  # noqa: BLE001 - the whole pack failed: every job of it, named at the end
            log.error("%s failed: %s", pack.key, " ".join(str(exc).split()), exc_info=not isinstance(exc, MtdError))
            recs = [exc] * len(todo)
        for i, rec in zip(todo, recs, strict=True):
            results[i] = _outcome(pack.jobs[i], cfg, planned[i], rec)
    return results


def _event(out: str, what: str, job: Unit, run_id: str) -> None:
    line = json.dumps({"event": what, "key": job.key, "run_id": run_id, "pid": os.getpid(), "time": time.time()})
    append_line(Path(out) / "sweep-events.jsonl", line)  # O_APPEND: whole lines; never through a planted link


# ------------------------------------------------------------------------------------------ driver


def survey(jobs: list[Job], cfg: SweepConfig) -> dict[str, dict[str, Any] | None]:
    """Each job's finished record, or None; every job None while a store is still to be made."""
    missing = [s for s in cfg.stores if not Path(s).exists()]
    if missing:  # a plan for stores still to be made (make paper DRY_RUN=1): nothing can be done yet
        log.info("store %s does not exist yet: every job is pending", missing[0])
        return {job.key: None for job in jobs}
    return {job.key: plan_run(request_for(job, cfg)).done() for job in jobs}


def pending_jobs(jobs: list[Job], cfg: SweepConfig) -> tuple[list[Job], int]:
    """Jobs whose record is not done yet, and how many are done."""
    records = survey(jobs, cfg)
    todo = [job for job in jobs if records[job.key] is None]
    return todo, len(jobs) - len(todo)


def describe(jobs: Iterable[Job]) -> str:
    jobs = list(jobs)
    kinds = {k: sum(j.kind == k for j in jobs) for k in ("stage1", "baseline", "student")}
    return f"{len(jobs)} jobs: {kinds['student']} students, {kinds['baseline']} CE-only, {kinds['stage1']} stage-1"


def run_sweep(cfg: SweepConfig, workers: int = 1, executor: str = "local", address: str | None = None,
              dry_run: bool = False, slurm: dict[str, Any] | None = None) -> list[dict]:
    """Plan, check, run; then wait for the runs other sweeps held, and take over those whose owner died.

    Raises ``SweepIncomplete`` (exit status 4) naming what is not done at the end (a failed run).
    """
    if executor not in EXECUTORS:
        raise MtdError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if executor == "slurm" and not dry_run:  # before any work: never local jobs by surprise
        check_slurm((slurm or {}).get("cluster"))
    if not dry_run:  # a dry run may plan for stores still to be dumped (make paper DRY_RUN=1)
        for path in cfg.stores:
            refuse_unfinished(Path(path))
    check_config(cfg)
    jobs = make_plan(cfg)
    records = survey(jobs, cfg)
    todo, done = [j for j in jobs if records[j.key] is None], sum(r is not None for r in records.values())
    log.info("%s %s: %s; %d done, %d to run", cfg.stores[0], cfg.student, describe(jobs), done, len(todo))
    calibrate = (lambda job: request_for(job, cfg)) if dry_run else None
    for line in estimate_lines(todo, cfg, workers, calibrate, save_models=cfg.save_models):
        log.info("estimate: %s", line)
    if dry_run:
        for job in todo:
            log.debug("planned: %s (seed %d, store %d)", job.key, job.seed, job.store_index)
    if dry_run or not todo:
        return [{"key": j.key, "status": "planned"} for j in todo]
    if executor == "local":
        check_threads(records, cfg, threads_per_run(cfg, workers))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    check_target(Path(cfg.out) / "sweep-events.jsonl")  # refused before the first job, not in every worker
    size = students_per_process(todo, cfg, workers)
    results = _run(units(todo, cfg, size), cfg, workers, executor, address, slurm, wait=False)
    locked = {r["key"] for r in results if r["status"] == "locked"}
    if locked:  # held by another sweep: wait for it, and run what it did not finish (its owner died)
        log.info("%d runs were held by another process: waiting for them", len(locked))
        again = _run(units([j for j in todo if j.key in locked], cfg, size), cfg, workers, executor, address,
                     slurm, wait=True)
        results = [r for r in results if r["key"] not in locked] + again
    missing, _ = pending_jobs(jobs, cfg)
    if missing:
        failed = {r["key"]: r.get("error") for r in results if r["status"] == "failed"}
        first = missing[0].key
        why = f": {failed[first]}" if failed.get(first) else ""
        raise SweepIncomplete(f"{len(missing)} of {len(jobs)} runs are not done ({sweep_outcome(results)}); "
                              f"the first is {first}{why}; run the sweep again to retry them")
    return results


def units(jobs: list[Job], cfg: SweepConfig, size: int) -> list[Unit]:
    """The jobs as the scheduler runs them: packs of up to ``size`` compatible students (``students.pack.packs``:
    one seed, one recipe setting, one store), every other job alone."""
    if size <= 1:
        return list(jobs)
    groups = packs([request_for(j, cfg) for j in jobs], size)
    out: list[Unit] = [Pack(tuple(jobs[i] for i in g)) if len(g) > 1 else jobs[g[0]] for g in groups]
    n = sum(isinstance(u, Pack) for u in out)
    if n:
        log.info("%d packs of up to %d students, %d runs alone", n, size, len(out) - n)
    elif jobs:
        log.info("--students-per-process %d: %s", size, packable(request_for(jobs[-1], cfg)) or "no two runs share "
                 "a pack (each seed and setting has one run to go)")
    return out


def students_per_process(todo: list[Job], cfg: SweepConfig, workers: int) -> int:
    """``cfg.students_per_process`` as a number: "auto" measured (``students.pack.auto_size``) on the largest
    group of compatible runs."""
    size = cfg.students_per_process
    if size != "auto":
        return int(size)
    reqs = [request_for(j, cfg) for j in todo]
    groups = [g for g in packs(reqs, MAX_STUDENTS) if len(g) > 1]
    if not groups:
        return 1
    group = max(groups, key=len)
    import torch

    gpus = torch.cuda.device_count() or 1
    size, why = auto_size([plan_run(reqs[i]) for i in group], share=-(-workers // gpus))
    log.info("--students-per-process auto: %s", why)
    return size


def _run(jobs: list[Unit], cfg: SweepConfig, workers: int, executor: str, address: str | None,
         slurm: dict[str, Any] | None, wait: bool) -> list[dict]:
    if executor == "local":
        return run_local(jobs, cfg, workers, wait, execute, peak=lambda: _peak(jobs[0], cfg))
    if executor == "ray":
        return run_ray(jobs, cfg, address, workers, wait, execute)
    slurm = dict(slurm or {})
    cluster = slurm.pop("cluster", None)
    return run_slurm(jobs, cfg, Path(cfg.out) / "slurm", slurm, cluster, wait, execute)


def _peak(unit: Unit, cfg: SweepConfig) -> int | None:
    """The peak GPU bytes of a unit's calibration steps (``students.pack.peak_memory``), None when unknown."""
    try:
        return peak_memory([plan_run(request_for(j, cfg)) for j in members(unit)])
    except Exception as exc:  # noqa: BLE001 - no measurement: the workers are placed without the check
        log.warning("no memory check of the workers per GPU: %s", " ".join(str(exc).split())[:200])
        return None


def check_config(cfg: SweepConfig) -> None:
    """Before the first job: the recipe's settings (type and range), the pool against each store, R repeat
    stores that differ; a two-stage (TinyBERT) sweep of R repeats on one store is named as unlike the paper's."""
    recipe = get_recipe(cfg.student)
    settings = recipe.Settings.resolve(first_overrides(cfg)).settings
    for rule in cfg.rules:  # every rule's settings, before the first job: one line naming what does not fit
        try:
            recipe.Settings.resolve(rule_overrides(cfg.overrides, rule))
        except MtdError as exc:
            raise MtdError(f"--rules {rule}: {exc}") from None
    if student_traits(cfg.student, first_overrides(cfg))[1] and len(cfg.stores) == 1 and cfg.repeats > 1:
        log.warning("%s: %d repeats on one store differ by seed only; the paper's TinyBERT repeats each use "
                    "their own augmentation file (give --store %d times: make sweep STUDENT=tinybert builds "
                    "them)", cfg.student, cfg.repeats, cfg.repeats)
    weights = getattr(settings, "teacher_weights", None)
    if weights is not None:
        zero = [t for t in cfg.pool if t < len(weights) and weights[t] == 0]
        if zero:
            raise MtdError(f"teacher_weights gives pool teacher {zero[0]} weight 0: its k = 1 runs would have no "
                           "teacher (leave it out of --pool)")
    prints: dict[str, str] = {}
    for path in cfg.stores:
        if Path(path).exists():
            with open_store(path) as s:
                if len(cfg.stores) > 1 and s.fingerprint in prints:
                    raise MtdError(f"--store {path} and --store {prints[s.fingerprint]} hold the same data "
                                   f"(fingerprint {s.fingerprint[:12]}): R repeat stores must differ (e.g. "
                                   "augmentation files made with --seed 0, 1, 2)")
                prints[s.fingerprint] = str(path)
                bad = [t for t in cfg.pool if t >= s.num_teachers]
                if weights is not None and len(weights) != s.num_teachers:
                    raise MtdError(f"teacher_weights has {len(weights)} weights; {path} has {s.num_teachers} "
                                   "teachers (one weight per store teacher)")
            if bad:
                raise MtdError(f"--pool: index {max(bad)} out of range: {path} has {s.num_teachers} teachers "
                               f"(--pool 0-{s.num_teachers - 1} takes them all; make: POOL=0-{s.num_teachers - 1})")


def check_threads(records: dict[str, dict[str, Any] | None], cfg: SweepConfig, threads: int) -> None:
    """One thread count per sweep on the CPU: a run's numbers depend on it, so a resume must not mix counts."""
    if cfg.device not in (None, "auto", "cpu") or (cfg.device != "cpu" and _has_cuda()):
        return
    for key, rec in records.items():
        if rec is not None and rec.get("threads") not in (None, threads):
            raise MtdError(f"this sweep's runs so far ran on {rec['threads']} CPU threads each (e.g. {key}); "
                           f"this one would use {threads}: the results would mix thread counts. Run it with "
                           f"--threads {rec['threads']}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class SweepIncomplete(MtdError):
    """Some planned runs are not done at the end of a sweep (failed): exit status 4."""

    exit_code = EXIT_INCOMPLETE


def sweep_outcome(results: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to run"
