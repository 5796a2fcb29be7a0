"""The paper's sweep plan, and the parsing and checking of teacher index sets.

Sweep protocol (the paper's): for a pool of T teachers, every k-subset, k = 1..T;
for BERT students every member of a subset is primary once (sum_k k*C(T,k) =
T*2^(T-1) pairs: 192 for 6), ResNets take no primary (2^T - 1 = 63 subsets);
each repeated R times with seed ``base_seed + r``; plus one CE-only student
(k = 0, no teacher) per repeat seed. TinyBERT (``two_stage``) first distils the
intermediate layers from the primary teacher alone, so its stage-1 run depends
on (primary, repeat) only: T*R stage-1 jobs, each shared by every stage-2 job
with that primary and repeat, which lists the stage-1 key in ``depends_on``.

Order of the plan: stage-1 jobs, then the CE-only baselines, then the students
by k, subset, primary and repeat, so every job comes after what it depends on.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..core.errors import MtdError
from ..core.progress import duration

log = logging.getLogger(__name__)

JobKind = Literal["student", "stage1", "baseline"]


@dataclass(frozen=True)
class Job:
    """One run of the sweep: what it distils from, with which seed and store, after which jobs."""

    kind: JobKind
    teachers: tuple[int, ...]
    primary: int | None
    repeat: int
    seed: int
    store_index: int
    depends_on: tuple[str, ...] = ()
    online: bool = False  # an online twin: the same run with its teachers inside (``arrange``)
    rule: str | None = None  # a rules sweep's KD rule (``with_rules``); None: the sweep's settings decide

    @property
    def k(self) -> int:
        """Number of teachers whose logits are averaged (0 for the CE-only baseline)."""
        return 0 if self.kind == "baseline" else len(self.teachers)

    @property
    def key(self) -> str:
        """A stable, readable identifier, equal for equal jobs: ``student/t0-2-5/p2/r1/s1/store0``."""
        teachers = "-".join(map(str, self.teachers)) or "none"
        primary = "none" if self.primary is None else str(self.primary)
        return (f"{self.kind}/t{teachers}/p{primary}/r{self.repeat}"
                f"/s{self.seed}/store{self.store_index}" + ("/online" if self.online else "") +
                (f"/{self.rule}" if self.rule else ""))


@dataclass(frozen=True)
class Pack:
    """Jobs trained together as one model in one process (``students.pack``): one unit of the scheduler, one
    result per job."""

    jobs: tuple[Job, ...]

    @property
    def key(self) -> str:
        return f"pack{len(self.jobs)}/{self.jobs[0].key}"

    @property
    def depends_on(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for j in self.jobs for d in j.depends_on))


Unit = Job | Pack


def members(unit: Unit) -> tuple[Job, ...]:
    """The jobs of a scheduler's unit: a pack's, or the job itself."""
    return unit.jobs if isinstance(unit, Pack) else (unit,)


def plan_sweep(pool: list[int], student: str, repeats: int, bert_student: bool, two_stage: bool,
               base_seed: int = 0, stores: int = 1) -> list[Job]:
    """Every job of the paper's sweep for ``student`` over the teacher ``pool``.

    ``stores`` is how many stores were given: 1 (all repeats read store 0) or
    ``repeats`` (TinyBERT's augmentation files: repeat r reads store r).
    """
    pool = _check_plan_args(pool, repeats, bert_student, two_stage, stores)
    store_of = (lambda r: r) if stores == repeats and stores > 1 else (lambda r: 0)
    stage1 = {(p, r): Job("stage1", (p,), p, r, base_seed + r, store_of(r))
              for r in range(repeats) for p in pool} if two_stage else {}
    baselines = [Job("baseline", (), None, r, base_seed + r, store_of(r)) for r in range(repeats)]
    students = []
    for subset in _subsets(pool):
        for primary in (subset if bert_student else (None,)):
            for r in range(repeats):
                deps = (stage1[(primary, r)].key,) if two_stage else ()
                students.append(Job("student", subset, primary, r, base_seed + r, store_of(r), deps))
    jobs = list(stage1.values()) + baselines + students
    log.info("sweep plan for %s: %d stage-1, %d baseline, %d student jobs",
             student, len(stage1), len(baselines), len(students))
    return jobs


def with_rules(jobs: list[Job], rules: tuple[str, ...]) -> list[Job]:
    """The plan once per KD rule (``mtd-sweep --rules``): every multi-teacher student job under each rule, the
    k = 1 students and the CE-only runs once, under the first rule (with one teacher, or none, every rule is plain
    KD: the same runs, shared by every rule's experiment in the report), stage-1 jobs once as they are."""
    if not rules:
        return jobs
    out = []
    for i, rule in enumerate(rules):
        for job in jobs:
            if job.kind == "stage1":
                out += [job] if i == 0 else []
            elif job.k <= 1:
                out += [replace(job, rule=rule)] if i == 0 else []
            else:
                out.append(replace(job, rule=rule))
    return out


def rule_overrides(overrides: dict[str, Any], rule: str | None) -> dict[str, Any]:
    """A job's recipe settings under its rule: ``kd_rule`` set, and the random-subset settings kept for that rule
    alone (another rule refuses them)."""
    if rule is None:
        return dict(overrides)
    out = {k: v for k, v in overrides.items() if rule == "random_subset" or k not in SUBSET_SETTINGS}
    return {**out, "kd_rule": rule}


def first_overrides(cfg: Any) -> dict[str, Any]:
    """A sweep's settings as its first rule has them (its k = 1 and CE-only runs'): the settings of a sweep."""
    return rule_overrides(cfg.overrides, (cfg.rules or (None,))[0])


SUBSET_SETTINGS = ("subset_size", "subset_rule")
ORDERS = ("plan", "shuffled")


def arrange(jobs: list[Job], order: str = "plan", twins: bool = False, twin_repeats: int | None = None,
            seed: int = 0) -> list[Job]:
    """The plan in the order it runs.

    ``order`` "plan": stage 1, CE-only, then the students by k ascending, so a machine whose load changes
    during the sweep shifts the per-k costs (and the slow last hours fall on the largest k); "shuffled": the
    student jobs in a seeded random order (stage-1 and CE-only jobs still first), so load is spread over
    every k alike. ``twins``: each student job of the first ``twin_repeats`` repeats (default all) is followed
    by its online twin (its teachers run inside the loop; same teachers, primary and seed), so the report can
    check its estimated online cost against a measurement taken under the same load."""
    if order not in ORDERS:
        raise MtdError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    head = [j for j in jobs if j.kind != "student"]
    students = [j for j in jobs if j.kind == "student"]
    if order == "shuffled":
        students = [students[i] for i in random.Random(seed).sample(range(len(students)), len(students))]
    if not twins:
        return head + students
    if any(j.depends_on for j in students):
        raise MtdError("online twins are for one-stage students: a two-stage (TinyBERT) run's online twin would "
                       "need its own stage 1")
    limit = twin_repeats if twin_repeats is not None else max((j.repeat for j in students), default=0) + 1
    paired = []
    for j in students:
        paired += [j, replace(j, online=True)] if j.repeat < limit else [j]
    return head + paired


def _subsets(pool: tuple[int, ...]) -> Iterable[tuple[int, ...]]:
    """Every non-empty subset of ``pool``, by size then lexicographically."""
    for k in range(1, len(pool) + 1):
        yield from itertools.combinations(pool, k)


def _check_plan_args(pool: list[int], repeats: int, bert_student: bool, two_stage: bool,
                     stores: int) -> tuple[int, ...]:
    """The pool sorted; MtdError for an empty or repeated pool, bad repeats or store count."""
    if not pool:
        raise MtdError("--pool: the teacher pool is empty")
    if len(set(pool)) != len(pool):
        raise MtdError(f"--pool: duplicate teacher in {list(pool)}")
    if min(pool) < 0:
        raise MtdError(f"--pool: negative teacher index {min(pool)}")
    if repeats < 1:
        raise MtdError(f"--repeats: must be at least 1, got {repeats}")
    if two_stage and not bert_student:
        raise MtdError("a two-stage (TinyBERT) sweep needs a BERT student with a primary teacher")
    if stores not in (1, repeats):
        raise MtdError(f"--store given {stores} times: give it once, or once per repeat ({repeats})")
    return tuple(sorted(pool))


def job_name(job: Unit) -> str:
    """What a job is, in words: ``k=2 teachers 0,3 primary 0 seed 1``, ``CE-only seed 0``, ``stage 1 primary 2``;
    a pack: ``pack of 4 seed 1 (k=1 teachers 0, ...)``."""
    if isinstance(job, Pack):
        return f"pack of {len(job.jobs)} seed {job.jobs[0].seed}"
    what = {"stage1": "stage 1", "baseline": "CE-only"}.get(job.kind, f"k={len(job.teachers)}") + \
        (" online twin" if job.online else "")
    teachers = f" teachers {','.join(map(str, job.teachers))}" if job.teachers and job.kind != "stage1" else ""
    primary = f" primary {job.primary}" if job.primary is not None else ""
    rule = f" {job.rule}" if job.rule and job.k > 1 else ""
    return f"{what}{teachers}{primary} seed {job.seed}{rule}"


SCORE_NAMES = {"ild_loss": "stage-1 loss"}  # a score that is not the task's metric, as a finished line names it


def job_line(job: Job, result: dict, finished: int, total: int, elapsed: float) -> str:
    """One line per finished job: done/total, what it was, its score and time, and the sweep's ETA.

    A student that finished dead (``records.is_dead``: one class for every example, or no better than the
    majority class) reads ``dead`` where a good one reads ``done``; a TinyBERT stage-1 job names its loss."""
    outcome = "dead" if result.get("dead") else result["status"]
    if result.get("metric") is not None:
        name = result.get("metric_name") or "metric"
        outcome = (f"{outcome}, {SCORE_NAMES.get(name, name)} {result['metric']:.4f} in "
                   f"{duration(result.get('wall_s') or 0)}")
    elif result.get("error"):
        outcome = f"{outcome}: {result['error']}"
    eta = f"; ETA {duration(elapsed / finished * (total - finished))}" if finished < total else "; sweep done"
    return f"[{finished}/{total}] {job_name(job)}: {outcome}{eta}"
