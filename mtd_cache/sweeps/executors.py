"""Executors of a sweep's jobs: local worker processes, Ray, Slurm (submitit), under one scheduler.

``run_scheduled`` submits a job once every job it depends on has finished (TinyBERT's stage-2 runs after
their stage-1 run). ``run_local`` keeps its pool alive through its workers' deaths: a worker killed by the
system (SIGKILL from the out-of-memory killer) breaks a ``ProcessPoolExecutor``, every job then in flight
is lost with it; the pool is rebuilt and those jobs submitted again, and a job whose own worker was killed
twice is a failed job, named at the end of the sweep (exit status 4), never a crash of the sweep.
``run_slurm`` refuses to run locally by surprise: without Slurm (no ``sbatch``) it is one line, exit status
2, unless ``--slurm-local`` asks for submitit's local executor. Submitit's job files (pickles it writes and
reads back) go to a folder made fresh for each sweep (``mkdtemp`` under ``<out>/slurm``): nothing planted
there before the sweep can be read as a job's result.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..core.errors import MtdError
from ..core.progress import job_logging
from ..core.safe_files import make_dirs
from .plan import Unit, job_line, job_name, members

log = logging.getLogger(__name__)
KILLED_TWICE = 2  # a job whose worker was killed this many times is failed, not submitted again


def run_scheduled(jobs: list[Unit], submit: Callable[[list[Unit]], list[Any]],
                  next_done: Callable[[list[Any]], tuple[Any, dict | list[dict]]]) -> list[dict]:
    """Run ``jobs`` (jobs, and packs of jobs) in plan order, each once the jobs it ``depends_on`` (among
    ``jobs``) have finished; one result per job.

    ``submit`` starts a list of units and returns a handle for each; ``next_done`` waits for one of the
    running handles and returns it with its result: a job's, or a pack's list of its jobs' results (one dict
    for all of them: its process died). A dependency outside ``jobs`` is done already.
    """
    keys = {j.key for unit in jobs for j in members(unit)}
    blockers = {u.key: set(u.depends_on) & keys for u in jobs}
    queued, running, results = list(jobs), {}, []
    total = sum(len(members(u)) for u in jobs)
    start = time.perf_counter()
    with tqdm(total=total, desc="sweep", unit="run", disable=None if sys.stderr.isatty() else True) as bar:
        while queued or running:
            ready = [j for j in queued if not blockers[j.key]]
            if ready:
                queued = [j for j in queued if blockers[j.key]]
                running.update(zip(submit(ready), ready, strict=True))
            handle, result = next_done(list(running))
            unit = running.pop(handle)
            outcomes = result if isinstance(result, list) else [result] * len(members(unit))
            for done, one in zip(members(unit), outcomes, strict=True):
                if one.get("key") != done.key:  # a unit whose process died (a Ray or Slurm job): named by its key
                    one = {**one, "key": done.key, "run_id": None}
                for waiting in blockers.values():
                    waiting.discard(done.key)
                results.append(one)
                bar.update()
                log.info("%s", job_line(done, one, len(results), total, time.perf_counter() - start))
    return results


def in_worker(execute: Callable, level: int, job: Unit, cfg: Any, wait: bool) -> dict | list[dict]:
    """``execute(job, cfg, wait)`` where the job runs (a worker process, a Ray task, a Slurm job), its log lines
    (``core.progress.job_logging``: its periodic progress, ``MTD_PROGRESS_S``, and warnings; every line at
    ``level`` DEBUG) to stderr, each prefixed by the job: a local sweep's workers share the sweep's stderr, so a
    job shows while it runs."""
    job_logging(job_name(job), level)
    return execute(job, cfg, wait)


def run_local(jobs: list[Unit], cfg: Any, workers: int, wait: bool, execute: Callable,
              peak: Callable[[], int | None] | None = None) -> list[dict]:
    """``execute(job, cfg, wait)`` of every job in worker processes (``sweeps.execute.execute``).

    With G GPUs, worker i runs on GPU i mod G: ``workers`` > G puts several on each GPU, as many as fit its
    memory by ``peak()`` (the peak bytes one job's calibration steps allocate; None: unknown, not checked)."""
    import torch

    devices = list(range(torch.cuda.device_count())) if cfg.device in (None, "auto", "cuda") else []
    if devices:
        workers = workers_on_gpus(workers, len(devices), peak() if peak is not None and workers > len(devices)
                                  else None, torch.cuda.get_device_properties(0).total_memory)
    pool = _Pool(workers, (threads_per_run(cfg, workers), devices, os.getpid()), execute, cfg, wait)
    try:
        return run_scheduled(jobs, pool.submit, pool.next_done)
    finally:
        pool.shutdown()


def workers_on_gpus(workers: int, gpus: int, peak: int | None, memory: int) -> int:
    """How many of ``workers`` to run on ``gpus`` GPUs of ``memory`` bytes each, when one job's peak is ``peak``
    bytes (None: unknown): ceil(workers / gpus) on each, fewer when they would not fit (90% of the memory)."""
    each = -(-workers // gpus)
    if peak:
        fit = max(1, int(memory * 0.9) // (peak + CUDA_CONTEXT))
        if fit < each:
            log.warning("--workers %d: %d per GPU would not fit its memory (a run peaks at %.2f GiB of %.1f GiB); "
                        "running %d per GPU", workers, each, peak / 2**30, memory / 2**30, fit)
            each = fit
    workers = min(workers, each * gpus)
    if each > 1:
        log.info("%d workers on %d GPU(s): %d per GPU%s", workers, gpus, each,
                 f" (a run peaks at {peak / 2**30:.2f} GiB)" if peak else "")
    return workers


CUDA_CONTEXT = 512 * 2**20  # what each worker process's CUDA context takes on its GPU besides its tensors


class _Pool:
    """A ``ProcessPoolExecutor`` rebuilt when a worker dies; handles stay valid across rebuilds (one per job)."""

    def __init__(self, workers: int, initargs: tuple, execute: Callable, cfg: Any, wait: bool):
        self.workers, self.initargs, self.execute, self.cfg, self.wait = workers, initargs, execute, cfg, wait
        self.ex = self._new()
        self.future: dict[Unit, concurrent.futures.Future] = {}
        self.killed: dict[str, int] = {}  # job key -> times its worker was killed
        self.failed: dict[Unit, dict] = {}

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=self.initargs)

    def submit(self, ready: list[Unit]) -> list[Unit]:
        for job in ready:
            self.future[job] = self.ex.submit(in_worker, self.execute, logging.getLogger().getEffectiveLevel(), job,
                                              self.cfg, self.wait)
        return ready

    def next_done(self, running: list[Unit]) -> tuple[Unit, dict | list[dict]]:
        while True:
            if (job := next((j for j in running if j in self.failed), None)) is not None:
                return job, self.failed.pop(job)
            procs = dict(getattr(self.ex, "_processes", None) or {})
            futures = [self.future[j] for j in running]
            finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            job = next(j for j in running if self.future[j] in finished)  # the earliest submitted of those
            if not isinstance(self.future[job].exception(), BrokenProcessPool):
                return job, self.future[job].result()
            self._rebuild([j for j in running if self.future[j].done() and isinstance(
                self.future[j].exception(), BrokenProcessPool)], procs)

    def shutdown(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)

    def _rebuild(self, lost: list[Unit], procs: dict[int, Any]) -> None:
        """A worker died and took the pool with it: a new pool, and the jobs in flight again (but the ones whose
        own worker was killed twice, which fail)."""
        self.ex.shutdown(wait=True, cancel_futures=True)
        culprits = _killed_jobs(lost, procs, self.cfg.out)
        self.ex = self._new()
        for job in lost:
            if job.key in culprits:
                self.killed[job.key] = self.killed.get(job.key, 0) + 1
            how = death(culprits.get(job.key, ""))
            if self.killed.get(job.key, 0) >= KILLED_TWICE:
                error = f"its worker process {how} {KILLED_TWICE} times"
                log.error("%s failed: %s", job.key, error)
                self.failed[job] = {"key": job.key, "run_id": None, "status": "failed", "error": error}
            else:
                if job.key in culprits:
                    log.warning("%s: its worker process %s; running it again", job.key, how)
                self.submit([job])


def died(exc: BaseException) -> dict:
    """The result of a job whose process died before it could return one (its key filled in by the scheduler)."""
    why = " ".join(str(exc).split())[:200] or type(exc).__name__
    log.error("a job's process died: %s", why)
    return {"key": None, "status": "failed", "error": f"its process died ({type(exc).__name__}: {why})"}


def _killed_jobs(lost: list[Unit], procs: dict[int, Any], out: str) -> dict[str, str]:
    """Which of the ``lost`` jobs ran in a worker that was killed (the pool stops the others itself, with SIGTERM):
    {job key: signal name}, from the workers' exit codes and the sweep's event log (each start names its
    process); every lost job when that cannot tell."""
    dead = {pid: p.exitcode for pid, p in procs.items() if p.exitcode not in (None, 0, -signal.SIGTERM)}
    started: dict[str, int] = {}
    try:
        for line in (Path(out) / "sweep-events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "start":
                started[event["key"]] = int(event["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    named = {j.key: _signal_name(dead[started[j.key]]) for j in lost if started.get(j.key) in dead}
    if named:
        return named
    causes = {_signal_name(code) for code in dead.values()}  # no start to tell whose: what the dead workers say
    cause = next(iter(causes)) if len(causes) == 1 else ""
    return {j.key: cause for j in lost}


def death(cause: str) -> str:
    """How a worker ended, for a job's line: ``was killed (SIGKILL: out of memory?)``, ``was killed (SIGSEGV)``,
    ``exited (exit status 1)`` (a worker that fails as it starts, e.g. a job function it cannot import), or
    ``died`` when nothing says how."""
    if cause == "SIGKILL":
        return "was killed (SIGKILL: out of memory?)"
    if cause.startswith(("SIG", "signal")):
        return f"was killed ({cause})"
    return f"exited ({cause})" if cause else "died"


def _signal_name(code: int | None) -> str:
    try:
        return f"{signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
    except ValueError:
        return f"signal {-code}"


def threads_per_run(cfg: Any, workers: int) -> int:
    """Torch threads of each run: ``--threads``, else OMP_NUM_THREADS when set, else the cores split over workers."""
    if cfg.threads:
        return cfg.threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int, devices: list[int], parent: int) -> None:
    import multiprocessing

    import torch

    _die_with(parent)
    torch.set_num_threads(threads)
    if devices:  # one GPU per worker, by the worker's number in the pool
        ident = multiprocessing.current_process()._identity
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices[(ident[0] - 1) % len(devices) if ident else 0])


def _die_with(parent: int) -> None:
    """End this worker when the sweep that started it ends, however it ends (a SIGKILL included).

    Linux delivers SIGKILL to the worker when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere,
    and as a second line of defence, a watchdog thread checks every second that the parent is there.
    A worker's run locks are released by the kernel with it, so another sweep can take its runs over.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog alone
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mtd-parent-watchdog").start()


def run_ray(jobs: list[Unit], cfg: Any, address: str | None, workers: int, wait: bool,
            execute: Callable) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise MtdError("the ray executor needs Ray: pip install 'mtd-cache[ray]'") from None
    mine = {k: v for k, v in os.environ.items() if k.startswith("MTD_")}  # a cluster's workers do not inherit them
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": mine} if mine else None,
             **({} if address else {"num_cpus": workers}))  # the jobs' lines (in_worker) reach the sweep's stderr
    gpus = (cfg.gpus_per_run if cfg.gpus_per_run is not None else 1) if ray.cluster_resources().get("GPU") else 0
    if 0 < gpus < 1:
        log.info("each run asks Ray for %g of a GPU: up to %d runs share one", gpus, int(1 / gpus))
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(in_worker)
    level = logging.getLogger().getEffectiveLevel()

    def next_done(refs: list) -> tuple[Any, dict]:
        ready, _ = ray.wait(refs, num_returns=1)
        try:
            return ready[0], ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - a worker that died (out of memory): a failed job, named at the end
            return ready[0], died(exc)

    return run_scheduled(jobs, lambda ready: [remote.remote(execute, level, job, cfg, wait) for job in ready],
                         next_done)


def check_slurm(cluster: str | None) -> None:
    """Slurm is here (``sbatch`` on PATH), or the sweep asked for submitit's local executor (``--slurm-local``)."""
    if cluster is None and shutil.which("sbatch") is None:
        raise MtdError("--executor slurm: there is no Slurm here (sbatch is not on PATH); run on a Slurm login "
                       "node, or give --slurm-local to run the jobs as local processes through submitit")


def run_slurm(jobs: list[Unit], cfg: Any, folder: Path, params: dict[str, Any], cluster: str | None,
              wait: bool, execute: Callable, poll_s: float = 2.0) -> list[dict]:
    """The jobs as Slurm job arrays through submitit; ``cluster="local"`` (``--slurm-local``): submitit's local
    executor. Without Slurm, and not asked to run locally: one line, before any job."""
    try:
        import submitit
    except ImportError:
        raise MtdError("the slurm executor needs submitit: pip install 'mtd-cache[slurm]'") from None
    check_slurm(cluster)
    make_dirs(folder)
    folder = Path(tempfile.mkdtemp(prefix="sweep-", dir=folder))  # fresh: submitit reads pickles back from it
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    if cluster is None and executor.cluster != "slurm":
        raise MtdError(f"--executor slurm: submitit found no Slurm cluster (it would run the jobs {executor.cluster}"
                       "ly); give --slurm-local to run them as local processes")
    executor.update_parameters(**params)

    def next_done(handles: list) -> tuple[Any, dict]:
        while not (finished := [h for h in handles if h.done()]):
            time.sleep(poll_s)
        try:
            return finished[0], finished[0].result()
        except Exception as exc:  # noqa: BLE001 - a job Slurm killed (time, memory): a failed job, named at the end
            return finished[0], died(exc)

    # the jobs ready together go in one job array; each job's lines go to its own log (<folder>/<id>_log.err)
    job = functools.partial(in_worker, execute, logging.getLogger().getEffectiveLevel())
    return run_scheduled(jobs, lambda ready: executor.map_array(job, ready, [cfg] * len(ready),
                                                                [wait] * len(ready)), next_done)
