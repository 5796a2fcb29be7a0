"""Run ids stay valid across the redesign: the ids a72e07b computed, and a runs folder it wrote resumes with no re-run.

The fixture ``data/legacy_run_ids.json`` was written by the code of a72e07b (see ``legacy_stores.py``):
for six sweeps over stores with fixed metadata, every job's run id (or TinyBERT stage-1 id).
``data/legacy_id_keys.json`` names what those ids hash (each sweep's identity keys, its recipe's settings
among them), so a changed id is explained: a setting added without ``since=`` enters every id.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from legacy_stores import SWEEPS, image_store, text_store

from mtd_cache.students.run import plan_run
from mtd_cache.sweeps.execute import SweepConfig, make_plan, pending_jobs, request_for

DATA = Path(__file__).parent / "data"
LEGACY = json.loads((DATA / "legacy_run_ids.json").read_text())
LEGACY_KEYS = json.loads((DATA / "legacy_id_keys.json").read_text())


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
    planned = [plan_run(request_for(job, cfg)) for job in make_plan(cfg)]
    got = {job.key: p.run_id for job, p in zip(make_plan(cfg), planned, strict=True)}
    if got != LEGACY[name]:
        keys = identity_keys(p.identity for p in planned)
        new, gone = sorted(set(keys) - set(LEGACY_KEYS[name])), sorted(set(LEGACY_KEYS[name]) - set(keys))
        pytest.fail(f"{name}: the run ids changed. New in every id: {', '.join(new) or 'nothing'}; gone: "
                    f"{', '.join(gone) or 'nothing'}. A setting added later is declared with since= "
                    "(setting(default, source, since=\"VERSION\")): it then enters a run's id only when set, and "
                    "the ids of earlier runs hold. Otherwise a default or a hashed value changed.")


def identity_keys(identities) -> list[str]:
    """What a sweep's ids hash: the identity's keys, its recipe's settings as ``recipe.KEY``."""
    keys = set()
    for identity in identities:
        keys |= {k for k in identity if k != "recipe"} | {f"recipe.{k}" for k in identity.get("recipe", {})}
    return sorted(keys)


def test_a_setting_added_without_since_is_named(stores, tmp_path, monkeypatch):
    """The failure explains itself: a new setting in every id is named, with since= as the remedy."""
    name, kind, student, overrides = SWEEPS[0]
    original = plan_run

    def with_new_setting(req):
        p = original(req)
        return dataclasses.replace(p, identity={**p.identity, "recipe": {**p.identity["recipe"], "novel": 1}},
                                   run_id="0" * 64)

    monkeypatch.setattr(sys.modules[__name__], "plan_run", with_new_setting)
    with pytest.raises(pytest.fail.Exception, match=r"New in every id: recipe\.novel; gone: nothing\. A setting "
                                                    r"added later is declared with since="):
        test_every_job_keeps_its_run_id(stores, tmp_path, name, kind, student, overrides)


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
