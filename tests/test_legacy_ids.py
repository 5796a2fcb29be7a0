"""Run ids stay valid across the redesign: the ids a72e07b computed, and a runs folder it wrote resumes with no re-run.

The fixture ``data/legacy_run_ids.json`` was written by the code of a72e07b (see ``legacy_stores.py``):
for six sweeps over stores with fixed metadata, every job's run id (or TinyBERT stage-1 id).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from legacy_stores import SWEEPS, image_store, text_store

from mtd_cache.students.run import plan_run
from mtd_cache.sweeps.execute import SweepConfig, make_plan, pending_jobs, request_for

LEGACY = json.loads((Path(__file__).parent / "data" / "legacy_run_ids.json").read_text())


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy")
    return {"image": str(image_store(root / "image.h5")), "text": str(text_store(root / "text.h5"))}


def _config(stores, kind, student, overrides, out) -> SweepConfig:
    return SweepConfig(stores=(stores[kind],), student=student, pool=(0, 1, 2), repeats=2, out=str(out),
                       overrides=overrides, device="cpu")


@pytest.mark.parametrize("name, kind, student, overrides", SWEEPS, ids=[s[0] for s in SWEEPS])
def test_every_job_keeps_its_run_id(stores, tmp_path, name, kind, student, overrides):
    cfg = _config(stores, kind, student, overrides, tmp_path)
    got = {job.key: plan_run(request_for(job, cfg)).run_id for job in make_plan(cfg)}
    assert got == LEGACY[name]


@pytest.mark.parametrize("name, kind, student, overrides", SWEEPS, ids=[s[0] for s in SWEEPS])
def test_a_runs_folder_of_the_old_commit_resumes_with_zero_reruns(stores, tmp_path, name, kind, student, overrides):
    cfg = _config(stores, kind, student, overrides, tmp_path)
    task = "digits" if kind == "image" else "mrpc"
    jobs = make_plan(cfg)
    for job in jobs:  # what a72e07b left behind: a finished record per run, a stage1.json and model per stage 1
        rid = LEGACY[name][job.key]
        if job.kind == "stage1":
            folder = tmp_path / task / student / "stage1" / rid
            folder.mkdir(parents=True)
            (folder / "stage1.json").write_text(json.dumps({"stage1_id": rid, "status": "done"}))
            (folder / "model.safetensors").write_bytes(b"")
        else:
            path = tmp_path / task / student / f"{rid}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"run_id": rid, "status": "done"}))
    todo, done = pending_jobs(jobs, cfg)
    assert todo == [] and done == len(jobs) == len(LEGACY[name])
