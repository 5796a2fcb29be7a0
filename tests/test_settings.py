"""One configuration, one run and one experiment, however its settings are spelled (``temperature=4`` or ``4.0``),
while run ids keep hashing the settings as given (the pinned legacy ids: ``test_legacy_ids.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from legacy_stores import image_store

from mtd_cache.students.recipes.image_kd import Settings as ImageKD
from mtd_cache.students.run import RunRequest, alias_file, plan_run
from mtd_cache.sweeps.records import load_records


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return str(image_store(tmp_path_factory.mktemp("canonical") / "image.h5"))


def test_canonical_values_follow_the_declared_types():
    got = ImageKD.canonical({"temperature": 4, "lr": 1, "epochs": 3, "milestones": [1, 2], "unknown": 7})
    assert got == {"temperature": 4.0, "lr": 1.0, "epochs": 3, "milestones": [1.0, 2.0], "unknown": 7}
    assert isinstance(got["temperature"], float) and isinstance(got["epochs"], int)
    assert ImageKD.canonical({"temperature": "hot"}) == {"temperature": "hot"}  # kept when it no longer fits


def _plan(store: str, out: Path, **overrides):
    return plan_run(RunRequest(store=store, student="resnet8", teachers=(0, 1), seed=0, out=str(out),
                               overrides=overrides))


def _finish(planned) -> dict:
    """What a finished training leaves: the record (and the alias when the spelling is not canonical)."""
    from mtd_cache.students.record import RECORD_FIELDS

    record = {**dict.fromkeys(RECORD_FIELDS), "run_id": planned.run_id, "status": "done", "metric": 0.5}
    planned.impl.commit(planned, None, type("Job", (), {"checkpoint": None})(), record)
    return record


@pytest.mark.parametrize("first, then", [({"temperature": 4}, {}), ({}, {"temperature": 4})],
                         ids=["int-then-default", "default-then-int"])
def test_two_spellings_are_one_run(store, tmp_path, first, then):
    a, b = _plan(store, tmp_path, **first), _plan(store, tmp_path, **then)
    assert a.run_id != b.run_id and a.canonical_id == b.canonical_id  # ids as given; one canonical alias
    assert a.experiment == b.experiment and a.experiment["recipe"]["temperature"] == 4.0
    _finish(a)
    found = b.done()
    assert found is not None and found["run_id"] == a.run_id  # the second spelling finds the first run
    assert _plan(store, tmp_path, temperature=4.0).done()["run_id"] == a.run_id
    typed = a.run_id != a.canonical_id
    assert alias_file(a).exists() == typed  # only a non-canonical spelling leaves an alias
    if typed:
        assert json.loads(alias_file(a).read_text()) == {"run_id": a.run_id}


def _legacy_record(folder: Path, run_id: str, temperature, seed: int) -> None:
    """A record as written before experiments were canonical: experiment hashed with the typed value."""
    from mtd_cache.students.record import experiment_identity, make_experiment_id

    ident = experiment_identity("digits", "resnet8", {"temperature": temperature, "epochs": 1}, ["1" * 64],
                                ["a" * 64], False)
    rec = {"run_id": run_id, "kind": "student", "experiment": make_experiment_id(ident), "experiment_identity": ident,
           "task": "digits", "student": "resnet8", "teachers": [0], "primary": None, "k": 1, "seed": seed,
           "metric_name": "accuracy", "metric": 0.9, "wall_s": 1.0, "energy_j": None, "status": "done",
           "config": {"recipe": {"temperature": temperature, "epochs": 1}, "teachers": [0], "seed": seed},
           "store_fingerprint": "1" * 64, "teachers_sha256": ["a" * 64]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run_id}.json").write_text(json.dumps(rec))


def test_records_written_with_an_int_join_the_canonical_experiment_and_count_once(tmp_path, caplog):
    folder = tmp_path / "digits" / "resnet8"
    _legacy_record(folder, "int4", 4, seed=0)
    _legacy_record(folder, "float4", 4.0, seed=1)
    df = load_records(tmp_path)
    assert df["experiment"].nunique() == 1 and len(df) == 2
    _legacy_record(folder, "again", 4.0, seed=0)  # seed 0 trained twice under two spellings, before aliases
    df = load_records(tmp_path)
    assert sorted(df["run_id"]) == ["again", "float4"]  # the first by path of the twice-trained run
    assert "int4.json: run int4 already loaded" in caplog.text


@pytest.mark.slow
def test_a_sweep_trains_the_default_once_when_it_was_trained_spelled_otherwise(tmp_path):
    from mtd_cache.students.run import run_student
    from mtd_cache.teachers import train_teachers
    from mtd_cache.teachers.dump import run_dump

    train_teachers("digits", [0, 1], tmp_path / "teachers", "resnet8", None, {"epochs": 1, "batch_size": 512})
    store = str(run_dump("digits", tmp_path / "teachers", tmp_path / "store.h5", [], {}))
    request = dict(store=store, student="resnet8", teachers=(0, 1), out=str(tmp_path / "runs"))
    first = run_student(RunRequest(**request, overrides={"epochs": 1, "temperature": 4}))
    again = run_student(RunRequest(**request, overrides={"epochs": 1}))
    assert "reused" not in first and again["reused"] and again["run_id"] == first["run_id"]
    df = load_records(tmp_path / "runs")
    assert len(df) == 1 and df["experiment"].nunique() == 1


ROOT = Path(__file__).resolve().parents[1]


BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_every_setting_is_in_the_generated_settings_reference():
    """docs/settings.md is generated (tests/test_layout.py checks it is current): every recipe's settings are in it."""
    text = (ROOT / "docs" / "settings.md").read_text()
    for key in ("student_layers", "ild_epochs", "init_from_teacher", "alpha_hidden", "kd_rule"):
        assert f"| `{key}` |" in text
    h = subprocess.run([str(BIN / "mtd-train"), "--student", "tinybert", "--help-settings"], capture_output=True,
                       text=True)
    assert h.returncode == 0 and "ild_epochs" in h.stdout and "tinybert: recipe tinybert" in h.stdout
