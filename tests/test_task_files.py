"""Your own data: task files over CSV/TSV/JSONL and image folders, end to end, and imported stores trained on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import (
    make_bert,
    mrpc_texts,
    reviews_task,
    sst2_words,
    task_file,
    teacher_at,
    write_image_folders,
    write_mrpc_slice,
    write_sst2,
)

from mtd_cache.core.errors import MtdError
from mtd_cache.models import bert
from mtd_cache.store import TeacherStore, diff_stores
from mtd_cache.students.run import RunRequest, run_student
from mtd_cache.sweeps.execute import SweepConfig, run_sweep
from mtd_cache.sweeps.report import make_report
from mtd_cache.tasks.registry import get_task
from mtd_cache.tasks.text_data import task_inputs
from mtd_cache.teachers import dump, train_teachers
from mtd_cache.teachers.importer import import_arrays

BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- text: the same as the built-in task


@pytest.mark.parametrize("builtin", ["mrpc", "sst-2"])
def test_a_task_file_over_glues_files_gives_the_built_in_tasks_inputs_and_logits(tmp_path, builtin):
    if builtin == "mrpc":
        data = write_mrpc_slice(tmp_path / "glue", 30, 16)
        texts = mrpc_texts(data)
        cols = {"text_column": "#1 String", "text_pair_column": "#2 String", "label_column": "Quality"}
        folder = "MRPC"
    else:
        data = write_sst2(tmp_path / "glue", 40, 16)
        texts = sst2_words()
        cols = {"text_column": "sentence", "label_column": "label"}
        folder = "SST-2"
    path = task_file(tmp_path, "mine.json", {"name": "mine", "kind": "text", "train": f"glue/{folder}/train.tsv",
                                             "dev": f"glue/{folder}/dev.tsv", **cols})
    teachers = [teacher_at(make_bert(tmp_path / f"seed{s}", texts, seed=s), s, builtin, data) for s in (0, 1)]
    tok = bert.load_tokenizer(teachers[0].path)
    a, b = task_inputs(builtin, tok, 64, data), task_inputs(get_task(str(path)), tok, 64, None)
    for split in ("train", "dev"):
        for field in ("ids", "types", "offsets", "labels"):
            np.testing.assert_array_equal(getattr(getattr(a, split), field), getattr(getattr(b, split), field))
    built_in = dump.dump_teachers(builtin, teachers, tmp_path / "a.h5", [], {"max_length": 64}, "cpu")
    mine_teachers = [teacher_at(t.path, t.seed, "mine") for t in teachers]
    mine = dump.dump_teachers(str(path), mine_teachers, tmp_path / "b.h5", [], {"max_length": 64}, "cpu")
    with TeacherStore.open(built_in) as x, TeacherStore.open(mine) as y:
        np.testing.assert_array_equal(x.logits, y.logits)
        np.testing.assert_array_equal(x.dev_logits, y.dev_logits)
        assert (y.task, y.label_names, y.task_file["content"]["name"]) == ("mine", ["0", "1"], "mine")
        assert x.fingerprint != y.fingerprint  # the task file's content is hashed in


def test_csv_and_jsonl_versions_give_equal_stores_and_students_train_on_them(tmp_path):
    stores = {}
    for fmt in ("csv", "jsonl"):
        folder = tmp_path / fmt
        folder.mkdir()
        path = reviews_task(folder, fmt)
        texts = ["the film it was bad fine great a b c ,"]
        teachers = [teacher_at(make_bert(tmp_path / f"t{s}", texts, seed=s), s, "reviews") for s in (0, 1)]
        for t in teachers:  # three classes: a new head per teacher folder
            from transformers import BertForSequenceClassification

            m = BertForSequenceClassification.from_pretrained(t.path, num_labels=3, ignore_mismatched_sizes=True)
            m.save_pretrained(t.path)
        teachers = [teacher_at(t.path, t.seed, "reviews") for t in teachers]
        stores[fmt] = dump.dump_teachers(str(path), teachers, tmp_path / f"{fmt}.h5", [0], {"max_length": 32}, "cpu")
    differences = diff_stores(stores["csv"], stores["jsonl"])
    assert differences and all("attribute" in d for d in differences)  # datasets equal; the fingerprint and spec not
    assert {d.split(" attribute ")[1].split(":")[0] for d in differences} == {"fingerprint", "spec_json"}
    with TeacherStore.open(stores["jsonl"]) as s:
        assert s.label_names == ["1", "3", "5"] and s.num_classes == 3  # sorted as numbers
    rec = run_student(RunRequest(store=str(stores["jsonl"]), student="distilbert", teachers=(0, 1), primary=0,
                                 out=str(tmp_path / "runs"), device="cpu",
                                 overrides={"init_from_teacher": True, "student_layers": 1, "epochs": 1}))
    assert rec["status"] == "done" and rec["task"] == "reviews" and 0 <= rec["metric"] <= 1


def test_an_imported_text_store_fingerprints_as_a_dump_and_trains(tmp_path):
    write_sst2(tmp_path / "glue", 40, 16)
    path = task_file(tmp_path, "pos.json", {"name": "pos", "kind": "text", "train": "glue/SST-2/train.tsv",
                                            "dev": "glue/SST-2/dev.tsv", "text_column": "sentence",
                                            "label_column": "label"})
    teachers = [teacher_at(make_bert(tmp_path / f"seed{s}", sst2_words(), seed=s), s, "pos") for s in (0, 1)]
    dumped = dump.dump_teachers(str(path), teachers, tmp_path / "d.h5", [], {"max_length": 64}, "cpu")
    with TeacherStore.open(dumped) as s:
        logits, labels, dev_logits, dev_labels = s.logits[...], s.labels, s.dev_logits, s.dev_labels
        fingerprint = s.fingerprint
    out = import_arrays(tmp_path / "i.h5", str(path), np.array(logits), labels, dev_logits, dev_labels,
                        tokenizer=str(teachers[0].path), max_length=64, teacher_model="numpy",
                        force=True)  # untrained BERTs: one class for every dev example (the gate: test_importer)
    with TeacherStore.open(out) as s:
        assert s.fingerprint == fingerprint and s.imported and s.tokenizer["sha256"]
    rec = run_student(RunRequest(store=str(out), student="distilbert", teachers=(0, 1), primary=0,
                                 out=str(tmp_path / "runs"), device="cpu",
                                 overrides={"init": str(teachers[0].path), "student_layers": 2, "alpha_cos": 0.0,
                                            "epochs": 1}))
    assert rec["status"] == "done"
    with pytest.raises(MtdError, match=r"--labels: row 3 has label .*, the task's example 3 has"):
        bad = labels.copy()
        bad[3] = 1 - bad[3]
        import_arrays(tmp_path / "x.h5", str(path), np.array(logits), bad, tokenizer=str(teachers[0].path))
    with pytest.raises(MtdError, match="give --tokenizer"):
        import_arrays(tmp_path / "y.h5", str(path), np.array(logits), labels)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


# ----------------------------------------------------------------------------- images


@pytest.mark.slow
def test_an_image_folder_task_runs_teachers_dump_students_sweep_report_and_import(tmp_path):
    path = write_image_folders(tmp_path / "data")
    task = get_task(str(path))
    assert (task.label_names, task.channels, task.num_views) == (("left", "middle", "right"), 3, 9)
    assert all(0.0 < m < 1.0 for m in task.mean) and all(s > 0 for s in task.std)
    tdir = tmp_path / "teachers"
    train_teachers(str(path), [0, 1], tdir, "resnet8", None, {"epochs": 2}, device="cpu")
    assert json.loads((tdir / "seed0" / "teacher.json").read_text())["task"] == "shapes"
    r = subprocess.run([str(BIN / "mtd-cache"), "dump", "--task", str(path), "--teachers-dir", str(tdir), "--out",
                        str(tmp_path / "s.h5")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    store = tmp_path / "s.h5"
    with TeacherStore.open(store) as s:
        assert s.logits.shape == (72, 9, 2, 3) and s.task == "shapes" and s.task_file["resolved"]["channels"] == 3
        logits, views, fingerprint = np.array(s.logits), s.views, s.fingerprint
    cfg = SweepConfig(stores=(str(store),), student="resnet8", pool=(0, 1), repeats=1, out=str(tmp_path / "runs"),
                      overrides={"epochs": 1}, device="cpu", threads=1)
    results = run_sweep(cfg, workers=1)
    assert sorted(r["status"] for r in results) == ["done"] * 4
    files = {p.name for p in make_report(tmp_path / "runs", tmp_path / "report", n_resamples=200)}
    assert "shapes_resnet8_score_vs_k.png" in files and "differences.csv" in files
    # the same logits imported from "another framework": the dump's fingerprint, and students train on it
    images = get_task(str(path)).load("train")[0]
    out = import_arrays(tmp_path / "i.h5", str(path), logits, np.repeat(np.arange(3), 24), views=views,
                        inputs=images)
    with TeacherStore.open(out) as s:
        assert s.fingerprint == fingerprint
    rec = run_student(RunRequest(store=str(out), student="resnet8", teachers=(0, 1), out=str(tmp_path / "r2"),
                                 device="cpu", overrides={"epochs": 1}))
    assert rec["status"] == "done" and len(np.load(tmp_path / "r2" / "shapes" / "resnet8" /
                                                   rec["predictions"])["pred"]) == 24
    shuffled = images[::-1].copy()
    with pytest.raises(MtdError, match=r"--inputs \(the images, \(N, C, H, W\) uint8\): row 0 is not the task's "
                                       r"example 0"):
        import_arrays(tmp_path / "j.h5", str(path), logits, np.repeat(np.arange(3), 24), views=views,
                      inputs=shuffled)


# ----------------------------------------------------------------------------- bad task files


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mtd-cache"), *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("change, message", [
    ({"text_column": "body"}, "no column 'body' (task file {path}); columns: id, review, stars"),
    ({"metric": "auc"}, "{path}: metric 'auc': valid for text tasks: accuracy, f1, mcc"),
    ({"labels": ["1", "3"]}, "label '5' is not a label of task reviews (the task's labels are: 1, 3)"),
    ({"kind": "audio"}, "{path}: kind 'audio': expected \"text\", \"image\" or \"lm\" (language modelling)"),
    ({"epochs": 3}, "{path}: unknown key 'epochs' for a text task; valid: "),
    ({"name": "mrpc"}, "{path}: name 'mrpc' is a built-in task's: choose another name"),
    ({"train": "missing.csv"}, "missing.csv not found (task file {path})"),
], ids=["column", "metric", "label", "kind", "key", "builtin-name", "file"])
@pytest.mark.slow
def test_bad_text_task_files_are_one_line_exit_2_nothing_written(tmp_path, change, message):
    path = reviews_task(tmp_path, "csv")
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    r = _cli("teachers", "--task", path, "--model", tmp_path / "no-model", "--seeds", "0", "--out", tmp_path / "t")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message.format(path=path.resolve()) in r.stderr
    assert not (tmp_path / "t").exists()


def test_a_dev_label_training_never_saw_is_named(tmp_path):
    path = reviews_task(tmp_path, "jsonl")
    with open(tmp_path / "dev.jsonl", "a") as f:
        f.write(json.dumps({"id": 99, "review": "odd", "stars": 4}) + "\n")
    with pytest.raises(MtdError, match=r"dev.jsonl:19: label '4' is not a label of task reviews \(training saw: "
                                       r"1, 3, 5\)"):
        get_task(str(path)).read("dev")


@pytest.mark.parametrize("damage, message", [
    (lambda root: [p.unlink() for p in (root / "train" / "left").iterdir()], "train/left: an empty class folder"),
    (lambda root: (root / "train" / "left" / "000.png").write_bytes(b"not a png"),
     "train/left/000.png: not a readable image"),
    (lambda root: (root / "val" / "sideways").mkdir() or (root / "val" / "sideways" / "a.png").write_bytes(b""),
     "val/sideways: class 'sideways' is not a class of task shapes (training has: left, middle, right)"),
], ids=["empty-folder", "unreadable", "unknown-dev-class"])
@pytest.mark.slow
def test_bad_image_folders_are_one_line_exit_2_nothing_written(tmp_path, damage, message):
    path = write_image_folders(tmp_path / "data", per_class=(4, 2))
    damage(tmp_path / "data")
    r = _cli("teachers", "--task", path, "--model", "resnet8", "--seeds", "0", "--epochs", "1",
             "--out", tmp_path / "t")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "t" / "seed0" / "teacher.json").exists()


def test_the_task_is_read_from_the_store_alone(tmp_path):
    """A student needs the store only: the task file may be gone, its data must stay (or --data-dir)."""
    path = write_image_folders(tmp_path / "data", per_class=(6, 3))
    train_teachers(str(path), [0], tmp_path / "t", "resnet8", None, {"epochs": 1}, device="cpu",
                   force=True)  # one epoch on 18 images: at chance, and enough here (the gate: test_chance)
    store = dump.run_dump(str(path), tmp_path / "t", tmp_path / "s.h5", [], {})
    path.unlink()  # nothing but the store knows the task (no process-wide table of loaded task files)
    rec = run_student(RunRequest(store=str(store), student="resnet8", teachers=(0,), out=str(tmp_path / "runs"),
                                 device="cpu", overrides={"epochs": 1}))
    assert rec["status"] == "done" and torch.get_num_threads() >= 1
