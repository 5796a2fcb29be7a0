"""A pack (``mtd-sweep --students-per-process S``): S image students trained as one model in one process.

A pack's students are the runs they would be alone: the same run ids, the same records but for the timings and
the engine, the same first losses, metrics within one test example; each keeps its own BatchNorm statistics. A
killed pack resumes to the same result; a student that dies (NaN) fails alone; only compatible runs share a pack.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from factories import killed_after
from nan_student import poison
from safetensors.torch import load_file

from mtd_cache.core.errors import MtdError
from mtd_cache.core.losses import NonFiniteLossError
from mtd_cache.store import TeacherStore
from mtd_cache.students import objective, pack
from mtd_cache.students.pack import execute_pack, packable, packs, students_that_fit
from mtd_cache.students.run import RunRequest, execute_run, plan_run, run_student
from mtd_cache.sweeps import execute as sweep_execute
from mtd_cache.sweeps.executors import run_scheduled, workers_on_gpus
from mtd_cache.sweeps.plan import Job, Pack

SUBSETS = [(0,), (1,), (0, 1), ()]  # three students and the CE-only run of one seed
TIMINGS = {"wall_s", "energy_j", "wall_s_this_part", "energy_sources", "engine", "started_utc", "finished_utc",
           "history", "metric"}


def _requests(store, out, epochs=2, **kw) -> list[RunRequest]:
    return [RunRequest(store=str(store), student="resnet8", teachers=t, out=str(out), device="cpu", save_model=True,
                       overrides={"epochs": epochs, "batch_size": 8}, **kw) for t in SUBSETS]


@pytest.fixture(scope="module")
def alone_and_packed(tiny, tmp_path_factory):
    """The four runs trained alone, then as one pack, each with the first loss its objective computed."""
    root = tmp_path_factory.mktemp("pack")
    firsts: dict[str, list[float]] = {"alone": [], "pack": []}
    real = objective.Objective.__call__
    seen: set[int] = set()

    def spy(where):
        def call(self, student, teacher=None):
            out = real(self, student, teacher)
            if id(self) not in seen:  # each run's (each student's) objective, on its first step
                seen.add(id(self))
                firsts[where].append(float(out["loss"].detach()))
            return out
        return call

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(objective.Objective, "__call__", spy("alone"))
        alone = [execute_run(plan_run(r)) for r in _requests(tiny["image"], root / "alone")]
        mp.setattr(objective.Objective, "__call__", spy("pack"))
        packed = execute_pack([plan_run(r) for r in _requests(tiny["image"], root / "pack")])
    finally:
        mp.undo()
    return root, alone, packed, firsts


def test_a_pack_of_four_is_four_runs_alone(alone_and_packed):
    root, alone, packed, firsts = alone_and_packed
    assert [r["run_id"] for r in packed] == [r["run_id"] for r in alone]  # the same configuration, the same runs
    # the first step: the same initial weights, batch and targets; the pack's convolutions sum in another order
    np.testing.assert_allclose(firsts["pack"], firsts["alone"], rtol=1e-6)
    for a, p in zip(alone, packed, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in p.items() if k not in TIMINGS}
        assert a["engine"] == {"name": "single", "students": 1}
        assert p["engine"]["name"] == "pack" and p["engine"]["students"] == 4 and p["engine"]["pack"] == \
            [r["run_id"] for r in alone]
        assert p["wall_s"] == pytest.approx(p["engine"]["pack_wall_s"] / 4)  # its share of the pack's time
        # two epochs of 5 steps: the mean losses drift with the summation order, by about 1e-6 relative
        for ha, hp in zip(a["history"], p["history"], strict=True):
            assert hp["loss"] == pytest.approx(ha["loss"], rel=1e-4)
            assert hp["epoch"] == ha["epoch"] and hp["lr"] == ha["lr"]
        assert abs(p["metric"] - a["metric"]) <= 1 / 20 + 1e-9  # within one of the 20 test examples
        assert (root / "pack" / "digits" / "resnet8" / p["predictions"]).exists()


@pytest.mark.parametrize(("rule", "extra"), [("mean_probs", {}), ("mean_losses", {}), ("ca_mkd", {}),
                                             ("random_subset", {"subset_size": 1})])
def test_a_pack_of_a_rule_that_reads_each_teacher_is_its_runs_alone(tiny, tmp_path, rule, extra):
    reqs = [RunRequest(store=str(tiny["image"]), student="resnet8", teachers=t, out=str(tmp_path / where),
                       device="cpu", overrides={"epochs": 1, "batch_size": 8, "kd_rule": rule,
                                                "teacher_weights": [1.0, 3.0], **extra})
            for where in ("alone", "pack") for t in ((0,), (0, 1))]
    alone = [execute_run(plan_run(r)) for r in reqs[:2]]
    packed = execute_pack([plan_run(r) for r in reqs[2:]])
    for a, p in zip(alone, packed, strict=True):
        assert p["run_id"] == a["run_id"] and p["kd_rule"] == rule and p["teacher_weights"] == a["teacher_weights"]
        assert p["history"][0]["kd"] == pytest.approx(a["history"][0]["kd"], rel=1e-5)


def test_each_student_of_a_pack_keeps_its_own_batchnorm_statistics(alone_and_packed):
    root, alone, packed, _ = alone_and_packed
    weights = [load_file(str(root / where / "digits" / "resnet8" / r["model_file"]))
               for where, runs in (("alone", alone), ("pack", packed)) for r in runs]
    alone_w, pack_w = weights[:4], weights[4:]
    stats = [k for k in pack_w[0] if k.endswith("running_mean")]
    assert stats and set(pack_w[0]) == set(alone_w[0])  # the pack's students save as plain students
    for a, p in zip(alone_w, pack_w, strict=True):
        for k in stats:
            torch.testing.assert_close(p[k], a[k], rtol=1e-3, atol=1e-4)
    # students that saw other targets ended with other statistics: they are not shared
    assert not torch.equal(pack_w[0][stats[-1]], pack_w[3][stats[-1]])


def test_a_killed_pack_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    from mtd_cache.students.recipes import image_kd

    whole = execute_pack([plan_run(r) for r in _requests(tiny["image"], tmp_path / "whole")])
    real = image_kd.build_pack

    def killed_at_step_7(ctxs):  # epoch 2, step 2 of 5: after the epoch-1 checkpoint, mid-epoch
        job = real(ctxs)
        step, count = job.step, [0]

        def dies(batch, alive):
            count[0] += 1
            if count[0] == 7:
                raise KeyboardInterrupt
            return step(batch, alive)

        job.step = dies
        return job

    monkeypatch.setattr(image_kd, "build_pack", killed_at_step_7)
    reqs = _requests(tiny["image"], tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        execute_pack([plan_run(r) for r in reqs])
    ckpt = plan_run(reqs[0]).checkpoint  # the pack's resume point: its first student's
    assert ckpt.exists() and not plan_run(reqs[1]).checkpoint.exists()
    monkeypatch.setattr(image_kd, "build_pack", real)
    resumed = execute_pack([plan_run(r) for r in reqs])
    assert not ckpt.exists()  # spent once every record is written
    for w, r in zip(whole, resumed, strict=True):
        assert r["run_id"] == w["run_id"] and r["metric"] == w["metric"]
        assert [h["loss"] for h in r["history"]] == [h["loss"] for h in w["history"]]  # bit for bit


def test_a_resume_across_engines_is_refused(tiny, tmp_path):
    reqs = _requests(tiny["image"], tmp_path, epochs=3)[:2]
    killed_after("fit_pack._save_pack", execute_pack, [plan_run(r) for r in reqs])
    ckpt = plan_run(reqs[0]).checkpoint
    with pytest.raises(MtdError, match=f"^{ckpt} was written by a pack of 2 students trained as one \\(mtd-sweep "
                                       "--students-per-process 2\\); resumed alone"):
        run_student(reqs[0])
    with pytest.raises(MtdError, match="was written by another pack \\(2 students, another membership\\)"):
        execute_pack([plan_run(r) for r in (reqs[0], _requests(tiny["image"], tmp_path, epochs=3)[2])])
    ckpt.unlink()
    alone = [replace(r, out=str(tmp_path / "single")) for r in reqs]
    killed_after("fit._save_checkpoint", run_student, alone[1])
    with pytest.raises(MtdError, match="was written by this run alone \\(one student per process\\); resumed in a "
                                       "pack of 2"):
        execute_pack([plan_run(r) for r in alone])


def test_a_student_that_dies_fails_alone_and_the_others_finish(tiny, tmp_path, monkeypatch):
    clean = execute_pack([plan_run(r) for r in _requests(tiny["image"], tmp_path / "clean")])
    monkeypatch.setattr(TeacherStore, "mean_logits_many", TeacherStore.mean_logits_many)  # undone after the test
    poison((0, 1), start=2)  # the third gather on: student (0, 1)'s targets are NaN
    out = execute_pack([plan_run(r) for r in _requests(tiny["image"], tmp_path / "nan")])
    assert isinstance(out[2], NonFiniteLossError) and str(out[2]) == "loss is nan at step 2; stopping the run"
    assert not plan_run(_requests(tiny["image"], tmp_path / "nan")[2]).record.exists()
    for s in (0, 1, 3):  # the others: as in the clean pack (their rows never met the NaN)
        assert out[s]["run_id"] == clean[s]["run_id"] and out[s]["metric"] == pytest.approx(clean[s]["metric"])
        np.testing.assert_allclose([h["loss"] for h in out[s]["history"]],
                                   [h["loss"] for h in clean[s]["history"]], rtol=1e-5)
        assert all(math.isfinite(h["loss"]) for h in out[s]["history"])


@pytest.mark.slow
def test_a_sweep_of_packs_names_the_dead_student_and_finishes_the_rest(tiny, tmp_path, monkeypatch):
    import nan_student

    monkeypatch.setattr(sweep_execute, "execute", nan_student.execute)  # what the pool's workers run
    monkeypatch.setenv("MTD_TEST_NAN_SUBSET", "0-1")
    out = tmp_path / "runs"
    r = run_cli("mtd-sweep", "--store", tiny["image"], "--student", "resnet8", "--pool", "0-1", "--repeats", "1",
                "--epochs", "1", "--set", "batch_size=8", "--device", "cpu", "--threads", "1",
                "--students-per-process", "4", "--out", out)
    assert r.returncode == 4, r.stderr
    assert "1 packs of up to 4 students, 0 runs alone" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "mtd-sweep: error: 1 of 4 runs are not done (3 done, 1 failed); the first is student/t0-1/pnone/r0/s0/store0:"
        " loss is nan at step 2; stopping the run; run the sweep again to retry them")
    done = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert sorted(rec["teachers"] for rec in done) == [[], [0], [1]]
    assert {rec["engine"]["students"] for rec in done} == {4}
    events = [json.loads(line)["event"] for line in (out / "sweep-events.jsonl").read_text().splitlines()]
    assert events.count("finish") == 3 and events.count("failed") == 1


# ----------------------------------------------------------------------------- which runs share a pack


def test_only_compatible_runs_share_a_pack(tiny):
    store = str(tiny["image"])

    def req(teachers, **kw):
        return RunRequest(**{"store": store, "student": "resnet8", "teachers": teachers, **kw})

    reqs = [req((0,)), req((1,)), req((0, 1)), req(()),  # one seed, one setting: one pack
            req((0,), seed=1), req((1,), seed=1),  # another seed
            req((0,), overrides={"temperature": 2.0}), req((1,), overrides={"temperature": 2.0}),  # another setting
            req((0,), online=True, teachers_dir="t"),  # online teachers: alone
            req((0,), kind="stage1"),  # another kind: alone
            req((1,), store=store + "x")]  # another store: its own group
    assert packs(reqs, 4) == [[0, 1, 2, 3], [4, 5], [6, 7], [8], [9], [10]]
    assert packs(reqs, 3) == [[0, 1, 2], [3], [4, 5], [6, 7], [8], [9], [10]]
    assert packs(reqs, 1) == [[i] for i in range(len(reqs))]
    assert packable(req((0,), online=True)) == "runs with their teachers online train one per process"
    text = RunRequest(store=store, student="distilbert", teachers=(0,), primary=0)
    assert packable(text) == ("distilbert students train one per process (their recipe, distilbert, has no "
                              "multi-student engine: image students have)")
    with pytest.raises(MtdError, match="--students-per-process 0: expected at least 1"):
        packs(reqs, 0)
    with pytest.raises(MtdError, match="these runs cannot share a pack: runs with their teachers online"):
        online = replace(req((0,)), online=True, teachers_dir=str(tiny["teachers"]))
        execute_pack([plan_run(req((1,))), plan_run(online)])


def test_a_sweep_packs_the_runs_of_one_seed(tiny, tmp_path, caplog):
    from mtd_cache.sweeps.execute import SweepConfig, make_plan, students_per_process, units

    cfg = SweepConfig(stores=(str(tiny["image"]),), student="resnet8", pool=(0, 1), repeats=2, out=str(tmp_path))
    jobs = make_plan(cfg)
    got = units(jobs, cfg, 3)
    assert [[j.key for j in (u.jobs if isinstance(u, Pack) else (u,))] for u in got] == [
        ["baseline/tnone/pnone/r0/s0/store0", "student/t0/pnone/r0/s0/store0", "student/t1/pnone/r0/s0/store0"],
        ["baseline/tnone/pnone/r1/s1/store0", "student/t0/pnone/r1/s1/store0", "student/t1/pnone/r1/s1/store0"],
        ["student/t0-1/pnone/r0/s0/store0"], ["student/t0-1/pnone/r1/s1/store0"]]
    assert units(jobs, cfg, 1) == jobs
    with caplog.at_level(logging.INFO):
        assert students_per_process(jobs, replace(cfg, students_per_process="auto"), workers=1) == 1
    assert "--students-per-process auto: one student per process on the CPU (a pack there trains no faster" \
        in caplog.text


def test_the_scheduler_gives_one_result_per_job_of_a_pack():
    a, b, c = (Job("student", (t,), None, 0, 0, 0) for t in (0, 1, 2))
    unit = Pack((a, b))
    handles = {}

    def submit(ready):
        for u in ready:
            handles[u.key] = u
        return [u.key for u in ready]

    def next_done(running):
        key = running[0]
        if key == unit.key:  # a pack whose process died: one result for the whole pack
            return key, {"key": None, "status": "failed", "error": "its process died"}
        return key, {"key": key, "run_id": "r", "status": "done"}

    results = run_scheduled([unit, c], submit, next_done)
    assert [(r["key"], r["status"], r["run_id"]) for r in results] == [
        (a.key, "failed", None), (b.key, "failed", None), (c.key, "done", "r")]


# ----------------------------------------------------------------------------- the store's gather, memory


def test_the_gather_of_many_subsets_is_each_subset_s_gather(tiny):
    with TeacherStore.open(tiny["image"]) as s:
        idx, view = np.array([3, 0, 7, 7]), np.array([1, 0, 2, 1])
        subsets, weights = [(0,), (1,), (0, 1), (0, 1)], [None, None, None, (1.0, 3.0)]
        got = s.mean_logits_many(subsets, idx, view, weights)
        assert got.shape == (4, 4, s.num_classes) and got.dtype == np.float32
        for row, sub, w in zip(got, subsets, weights, strict=True):
            np.testing.assert_allclose(row, s.mean_logits(sub, idx, view, w), rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="2 subsets and 1 weights"):
            s.mean_logits_many([(0,), (1,)], idx, view, [None])


def test_how_many_students_and_workers_fit_a_gpu():
    gib = 2**30
    # the first student 1 GiB, each further one 0.25 GiB, 10 GiB free: 90% of it holds 1 + 32 students
    assert students_that_fit(gib, gib + gib // 4, 10 * gib) == 33
    assert students_that_fit(gib, gib + gib // 4, 10 * gib, limit=16) == 16
    assert students_that_fit(4 * gib, 5 * gib, 2 * gib) == 1  # not even one: one (the run says so when it fails)
    assert workers_on_gpus(8, 1, None, 80 * gib) == 8  # unknown peak: ceil(8 / 1) on the one GPU
    assert workers_on_gpus(8, 2, 10 * gib, 80 * gib) == 8  # 4 per GPU of 80 GiB fit
    assert workers_on_gpus(8, 1, 20 * gib, 80 * gib) == 3  # 3 x (20 GiB + a context) fit 72 GiB, not 8
    assert workers_on_gpus(1, 4, None, 80 * gib) == 1
    assert pack.MAX_STUDENTS == 64


def test_students_per_process_bad_values_are_one_line(tiny, tmp_path):
    for bad in ("0", "65", "many", "-1"):
        r = run_cli("mtd-sweep", "--store", tiny["image"], "--student", "resnet8", "--pool", "0-1",
                    "--students-per-process", bad, "--out", tmp_path / "runs", "--dry-run")
        assert r.returncode == 2
        assert f"Invalid value for '--students-per-process': '{bad}': a number of students from 1 to 64, or auto" \
            in r.stderr
    assert not (tmp_path / "runs").exists()
