"""The paper's sweep plan, and the parsing and checking of teacher index sets.

Sweep protocol (DESIGN.md): for a pool of T teachers, every k-subset, k = 1..T;
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
import re
from dataclasses import dataclass
from typing import Iterable, Literal

from .errors import MtdError

log = logging.getLogger(__name__)

JobKind = Literal["student", "stage1", "baseline"]
_INT = re.compile(r"^[0-9]+$")  # ASCII digits only: int() also takes other scripts' digits


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
                f"/s{self.seed}/store{self.store_index}")


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


def parse_index_set(text: str, option: str = "--teachers") -> tuple[int, ...]:
    """Parse ``"0,2,5"``, ``"0-5"`` or ``"0-2,4"`` into a sorted tuple of distinct indices.

    Raises MtdError naming the bad token: an empty set or item, a negative
    index, a malformed or descending range, a duplicate index.
    """
    if not text or not text.strip():
        raise MtdError(f"{option}: empty set of indices")
    seen: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        for index in _parse_token(token, text, option):
            if index in seen:
                raise MtdError(f"{option}: duplicate index {index} in {text!r}")
            seen.append(index)
    return tuple(sorted(seen))


def _parse_token(token: str, text: str, option: str) -> range:
    """One comma-separated item: an index or an ascending range ``a-b``."""
    if not token:
        raise MtdError(f"{option}: empty item in {text!r}")
    if token.startswith("-") and _INT.match(token[1:]):
        raise MtdError(f"{option}: negative index {token!r}")
    if _INT.match(token):
        return range(int(token), int(token) + 1)
    lo, sep, hi = (part.strip() for part in token.partition("-"))
    if not (sep and _INT.match(lo) and _INT.match(hi)):
        raise MtdError(f"{option}: malformed index or range {token!r} (expected e.g. 0,2,5 or 0-5)")
    if int(lo) > int(hi):
        raise MtdError(f"{option}: descending range {token!r} (write {hi}-{lo})")
    return range(int(lo), int(hi) + 1)


def validate_selection(teachers: Iterable[int], primary: int | None, num_teachers: int,
                       primary_required: bool) -> None:
    """Check a run's teacher set and primary against the store; MtdError with a one-line reason.

    ``primary_required`` is True for BERT students (which need one) and False
    for ResNets (for which a primary is an error).
    """
    teachers = tuple(teachers)
    if not teachers:
        raise MtdError("--teachers: empty set of indices")
    for t in teachers:
        if not 0 <= t < num_teachers:
            raise MtdError(f"--teachers: index {t} out of range: the store has {num_teachers} teachers "
                           f"(0-{num_teachers - 1})")
    duplicates = sorted({t for t in teachers if teachers.count(t) > 1})
    if duplicates:
        raise MtdError(f"--teachers: duplicate index {duplicates[0]}")
    if primary_required and primary is None:
        raise MtdError("--primary is required for BERT students (one of --teachers)")
    if not primary_required and primary is not None:
        raise MtdError(f"--primary {primary} given, but this student takes no primary teacher (ResNet)")
    if primary is not None and primary not in teachers:
        listed = ",".join(map(str, sorted(teachers)))
        raise MtdError(f"--primary {primary} is not in --teachers {listed}")
