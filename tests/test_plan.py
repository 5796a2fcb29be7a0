"""The sweep plan's counts, seeds, stores and ordering; index-set parsing and validation."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from math import comb

import pytest

from mtd_cache.core.errors import MtdError
from mtd_cache.core.indices import parse_index_set
from mtd_cache.students.selection import select
from mtd_cache.sweeps.plan import Job, arrange, plan_sweep

POOL = [0, 1, 2, 3, 4, 5]


def by_kind(jobs: list[Job]) -> Counter:
    return Counter(j.kind for j in jobs)


def test_resnet_plan_63_subsets_per_repeat_plus_baselines() -> None:
    jobs = plan_sweep(POOL, "resnet20", repeats=1, bert_student=False, two_stage=False)
    assert by_kind(jobs) == {"student": 63, "baseline": 1}
    students = [j for j in jobs if j.kind == "student"]
    assert all(j.primary is None and j.depends_on == () for j in students)
    assert Counter(j.k for j in students) == {k: comb(6, k) for k in range(1, 7)}
    assert len({j.teachers for j in students}) == 63


def test_bert_plan_192_pairs_times_repeats() -> None:
    jobs = plan_sweep(POOL, "distilbert", repeats=3, bert_student=True, two_stage=False, base_seed=10)
    students = [j for j in jobs if j.kind == "student"]
    assert len(students) == 192 * 3 and by_kind(jobs)["baseline"] == 3
    # every member of every subset is primary once per repeat: k * C(6, k) pairs at size k
    assert Counter(j.k for j in students) == {k: 3 * k * comb(6, k) for k in range(1, 7)}
    assert all(j.primary in j.teachers for j in students)
    assert {(j.repeat, j.seed) for j in jobs} == {(0, 10), (1, 11), (2, 12)}
    assert all(j.store_index == 0 for j in jobs)


def test_baselines_have_no_teacher_one_per_seed() -> None:
    jobs = plan_sweep([1, 3], "resnet20", repeats=4, bert_student=False, two_stage=False, base_seed=5)
    base = [j for j in jobs if j.kind == "baseline"]
    assert [(j.teachers, j.primary, j.k, j.seed) for j in base] == [((), None, 0, s) for s in (5, 6, 7, 8)]


def test_tinybert_stage1_jobs_before_dependants() -> None:
    jobs = plan_sweep(POOL, "tinybert", repeats=3, bert_student=True, two_stage=True, stores=3)
    stage1 = [j for j in jobs if j.kind == "stage1"]
    assert len(stage1) == 6 * 3
    assert {(j.primary, j.repeat) for j in stage1} == {(p, r) for p in POOL for r in range(3)}
    position = {j.key: i for i, j in enumerate(jobs)}
    assert len(position) == len(jobs)  # keys are unique
    for i, j in enumerate(jobs):
        if j.kind != "student":
            assert j.depends_on == ()
            continue
        (dep,) = j.depends_on
        assert position[dep] < i
        s1 = jobs[position[dep]]
        assert (s1.kind, s1.primary, s1.repeat, s1.seed, s1.store_index) == \
            ("stage1", j.primary, j.repeat, j.seed, j.store_index)
    # each stage-1 job is shared by the stage-2 jobs with its primary: 2^5 subsets contain a teacher
    assert Counter(j.depends_on[0] for j in jobs if j.kind == "student") == {s.key: 32 for s in stage1}


def test_stores_per_repeat() -> None:
    jobs = plan_sweep([0, 1], "tinybert", repeats=3, bert_student=True, two_stage=True, stores=3)
    assert all(j.store_index == j.repeat for j in jobs)
    single = plan_sweep([0, 1], "tinybert", repeats=3, bert_student=True, two_stage=True, stores=1)
    assert all(j.store_index == 0 for j in single)


def test_key_is_stable_and_readable() -> None:
    job = Job("student", (0, 2, 5), 2, repeat=1, seed=1, store_index=0)
    assert job.key == "student/t0-2-5/p2/r1/s1/store0"
    assert Job("baseline", (), None, 0, 0, 0).key == "baseline/tnone/pnone/r0/s0/store0"
    assert job == Job("student", (0, 2, 5), 2, 1, 1, 0) and hash(job) == hash(Job("student", (0, 2, 5), 2, 1, 1, 0))


def test_plan_is_deterministic_and_pool_order_free() -> None:
    a = plan_sweep([5, 0, 3], "distilbert", 2, True, False)
    b = plan_sweep([0, 3, 5], "distilbert", 2, True, False)
    assert a == b


@pytest.mark.parametrize("kwargs, message", [
    (dict(pool=[]), "empty"),
    (dict(pool=[0, 0]), "duplicate"),
    (dict(pool=[-1, 0]), "negative teacher index -1"),
    (dict(repeats=0), "--repeats"),
    (dict(stores=2), "--store given 2 times"),
    (dict(two_stage=True, bert_student=False), "two-stage"),
])
def test_plan_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = dict(pool=[0, 1], student="s", repeats=3, bert_student=True, two_stage=False) | kwargs
    with pytest.raises(MtdError, match=message):
        plan_sweep(**args)


@pytest.mark.parametrize("text, expected", [
    ("0,2,5", (0, 2, 5)),
    ("5,0,2", (0, 2, 5)),
    ("0-5", (0, 1, 2, 3, 4, 5)),
    ("0-2,4", (0, 1, 2, 4)),
    (" 3 , 1-1 ", (1, 3)),
    ("7", (7,)),
])
def test_parse_index_set(text: str, expected: tuple[int, ...]) -> None:
    assert parse_index_set(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "--teachers: empty set of indices"),
    ("  ", "--teachers: empty set of indices"),
    ("0,,2", "--teachers: empty item in '0,,2'"),
    ("0,2,", "empty item"),
    ("0,2,2", "--teachers: duplicate index 2 in '0,2,2'"),
    ("0-3,2", "duplicate index 2"),
    ("-1", "--teachers: negative index '-1'"),
    ("0,-3", "negative index '-3'"),
    ("1-", "malformed index or range '1-'"),
    ("a", "malformed index or range 'a'"),
    ("1-2-3", "malformed index or range '1-2-3'"),
    ("1.5", "malformed index or range '1.5'"),
    ("4-2", "--teachers: descending range '4-2'"),
])
def test_parse_index_set_errors_name_the_token(text: str, message: str) -> None:
    with pytest.raises(MtdError) as err:
        parse_index_set(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parse_index_set_names_the_option() -> None:
    with pytest.raises(MtdError, match="^--pool: duplicate index 1"):
        parse_index_set("1,1", option="--pool")


def test_select_accepts_good_runs() -> None:
    assert select((5, 0, 2), 2, num_teachers=6, primary_required=True).teachers == (0, 2, 5)
    assert select((0, 2, 5), None, num_teachers=6, primary_required=False).primary is None
    baseline = select((), None, num_teachers=6)  # the CE-only baseline: no teachers, no rule recorded
    assert baseline.k == 0 and baseline.record() == {"kd_rule": None, "teacher_weights": None}


@pytest.mark.parametrize("teachers, primary, required, message", [
    ((0, 6), None, False, "--teachers: index 6 out of range: the store has 6 teachers (0-5)"),
    ((-1,), None, False, "index -1 out of range"),
    ((), 1, False, "--primary 1 given for the CE-only baseline (--teachers none)"),
    ((1, 1), None, False, "duplicate index 1"),
    ((0, 2, 5), 3, True, "--primary 3 is not in --teachers 0,2,5"),
    ((0, 2, 5), None, True, "--primary is required for this student (one of --teachers)"),
    ((0, 2, 5), 2, False, "--primary 2 given, but this student takes no primary teacher (it reads the teachers' "
                          "logits only)"),
])
def test_select_errors(teachers: tuple, primary: int | None, required: bool, message: str) -> None:
    with pytest.raises(MtdError) as err:
        select(teachers, primary, num_teachers=6, primary_required=required)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_online_twins_follow_their_cached_run_and_keep_the_cached_keys() -> None:
    jobs = plan_sweep([0, 1], "resnet8", 2, bert_student=False, two_stage=False)
    paired = arrange(jobs, twins=True, twin_repeats=1)
    assert [j.key for j in paired if not j.online] == [j.key for j in jobs]  # the cached jobs keep their keys
    twins = [(i, j) for i, j in enumerate(paired) if j.online]
    assert len(twins) == 3 and all(paired[i - 1] == replace(j, online=False) for i, j in twins)
    assert all(j.repeat == 0 and j.key.endswith("/online") for _, j in twins)
    assert len(arrange(jobs, twins=True)) == len(jobs) + 6  # every repeat by default
    stage = plan_sweep([0, 1], "tinybert", 1, bert_student=True, two_stage=True)
    with pytest.raises(MtdError, match="online twins are for one-stage students"):
        arrange(stage, twins=True)


def test_a_shuffled_order_is_seeded_and_keeps_what_jobs_depend_on_first() -> None:
    jobs = plan_sweep([0, 1, 2], "tinybert", 2, bert_student=True, two_stage=True)
    shuffled = arrange(jobs, "shuffled", seed=3)
    assert shuffled == arrange(jobs, "shuffled", seed=3) != arrange(jobs, "shuffled", seed=4)
    assert sorted(j.key for j in shuffled) == sorted(j.key for j in jobs)
    first_student = next(i for i, j in enumerate(shuffled) if j.kind == "student")
    assert all(j.kind != "student" for j in shuffled[:first_student])  # stage 1 and CE-only still first
    assert [j.k for j in shuffled[first_student:]] != sorted(j.k for j in shuffled[first_student:])
    with pytest.raises(MtdError, match="unknown order 'random'"):
        arrange(jobs, "random")
