"""Bad inputs are one line and exit status 2 with nothing written: task files (encodings, long fields, labels),
images (decompression bombs, 16-bit greyscale scaled), settings out of range, missing data folders, report inputs
(non-finite metrics, FIFOs), logits beyond float16."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from factories import task_file, write_image_folders

REVIEWS = {"name": "reviews", "kind": "text", "train": "train.csv", "dev": "dev.csv", "text_column": "review",
           "label_column": "stars"}
ROWS = ["review,stars", "a fine film,5", "a bad film,1", "an average film,3", "great,5", "awful,1"]


def _text_task(root: Path, train: bytes, **extra) -> Path:
    (root / "train.csv").write_bytes(train)
    (root / "dev.csv").write_text("\n".join(ROWS) + "\n")
    return task_file(root, "reviews.json", {**REVIEWS, **extra})


def _dump(task: Path, out: Path) -> tuple[int, str]:
    r = run_cli("mtd-cache", "dump", "--task", task, "--teachers-dir", out.parent / "teachers", "--out", out)
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, lines[-1] if lines else ""


def _nothing_written(root: Path, before: set[str]) -> bool:
    return {str(p) for p in root.rglob("*")} == before


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


@pytest.mark.parametrize("train, extra, message", [
    ("\n".join(ROWS[:3]).encode() + b"\nun film \xe9trange,3\n", {}, ":4: byte 0xe9 at column 9 is not UTF-8 text"),
    ("\n".join(ROWS[:2]).encode() + b'\n"' + b"x" * 140_000 + b'",3\n' + "\n".join(ROWS[2:]).encode(), {},
     ":3: field larger than field limit (131072)"),
    ("\n".join(ROWS).encode(), {"labels": []}, "labels []: expected a list of two or more distinct names"),
    ("\n".join(ROWS).encode(), {"labels": ["1", "1", "5"]}, "labels ['1', '1', '5']: expected a list of two or more"),
], ids=["not-utf8", "long-field", "no-labels", "repeated-labels"])
def test_bad_task_files_are_one_line_naming_file_and_line(tmp_path, train, extra, message):
    task = _text_task(tmp_path, train, **extra)
    before = _files(tmp_path)
    code, line = _dump(task, tmp_path / "s.h5")
    assert code == 2 and message in line, line
    assert _nothing_written(tmp_path, before)


def test_a_task_file_that_is_not_utf8_names_its_line(tmp_path):
    task = tmp_path / "t.json"
    task.write_bytes(b'{"name": "x",\n "kind": "text",\n "description": "caf\xe9"}')
    code, line = _dump(task, tmp_path / "s.h5")
    assert code == 2 and line.endswith(f"{task}:3: byte 0xe9 at column 21 is not UTF-8 text (save the file as UTF-8)")


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height greyscale pixels (a decompression bomb's header), a few bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_naming_the_image(tmp_path):
    task = write_image_folders(tmp_path / "data")
    bomb = tmp_path / "data" / "train" / "left" / "bomb.png"
    _png_header(bomb, 20_000, 20_000)
    before = _files(tmp_path)
    code, line = _dump(task, tmp_path / "s.h5")
    assert code == 2 and f"{bomb}: too many pixels to decode (Image size (400000000 pixels) exceeds limit" in line
    assert _nothing_written(tmp_path, before)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from mtd_cache.tasks.image_folders import decode

    for cls, value in (("dark", 8_000), ("light", 60_000)):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(tmp_path / cls / "a.png")
    assert Image.open(tmp_path / "dark" / "a.png").mode.startswith("I")  # 16 bits in the file
    images, labels = decode(tmp_path, ["dark", "light"], 8, 1, ("dark", "light"))
    assert images[:, 0, 0, 0].tolist() == [round(8_000 * 255 / 65535), round(60_000 * 255 / 65535)]  # 31, 233


@pytest.mark.parametrize("sets, message", [
    (["--set", "milestones=[-0.5]"], "student setting milestones=[-0.5]: fractions of the epochs in (0, 1], ascending"),
    (["--set", "milestones=[1.5]"], "student setting milestones=[1.5]: fractions of the epochs in (0, 1], ascending"),
    (["--set", "milestones=[0.75,0.5]"], "milestones=[0.75, 0.5]: fractions of the epochs in (0, 1], ascending"),
    (["--data-dir", "/nonexistent"], "Invalid value for '--data-dir': Directory '/nonexistent' does not exist."),
], ids=["negative", "past-the-end", "descending", "no-data-dir"])
def test_bad_image_student_settings_are_one_line(tiny, tmp_path, sets, message):
    r = run_cli("mtd-train", "--store", tiny["image"], "--student", "resnet8", "--teachers", "0", "--epochs", "1",
                "--device", "cpu", "--out", tmp_path / "runs", *sets)
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "runs").exists()


def test_an_init_teacher_outside_the_store_is_one_line(tiny, tmp_path):
    r = run_cli("mtd-train", "--store", tiny["text"], "--student", "distilbert", "--teachers", "0,1", "--primary", "0",
                "--set", "init_from_teacher=true", "--set", "init_teacher=99", "--device", "cpu", "--out",
                tmp_path / "runs")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "mtd-train: error: init_teacher 99 is out of range: the store has 2 teachers (0-1)")
    assert not (tmp_path / "runs").exists()


def test_a_data_dir_that_is_not_there_is_refused_for_built_in_image_tasks(tiny, tmp_path):
    from mtd_cache.core.errors import MtdError
    from mtd_cache.tasks.images import load_split

    with pytest.raises(MtdError, match="--data-dir /nonexistent: no such folder"):
        load_split("digits", "train", data_dir="/nonexistent")
    r = run_cli("mtd-cache", "dump", "--task", "digits", "--teachers-dir", tiny["teachers"], "--data-dir",
                "/nonexistent", "--out", tmp_path / "s.h5")
    assert r.returncode == 2 and "Directory '/nonexistent' does not exist" in r.stderr and not list(tmp_path.iterdir())


def _record(folder: Path, run_id: str, metric, predictions: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run_id}.json").write_text(json.dumps({
        "run_id": run_id, "kind": "student", "task": "digits", "student": "resnet8", "teachers": [0], "primary": None,
        "k": 1, "seed": 0, "metric_name": "accuracy", "metric": metric, "wall_s": 1.0, "energy_j": None,
        "status": "done", "predictions": predictions}))


def test_the_report_skips_a_non_finite_metric_and_never_opens_a_fifo(tmp_path):
    runs = tmp_path / "runs" / "digits" / "resnet8"
    _record(runs, "good", 0.5, "good.predictions.npz")
    np.savez(runs / "good.predictions.npz", pred=np.array([0, 1]), label=np.array([0, 0]))
    _record(runs, "nan", float("nan"))
    _record(runs, "inf", float("inf"))
    _record(runs, "fifo", 0.75, "fifo.predictions.npz")
    os.mkfifo(runs / "fifo.predictions.npz")
    _record(runs, "elsewhere", 0.6, "../../../../etc/passwd")
    os.mkfifo(runs / "blocked.json")  # a FIFO where a record would be
    r = run_cli("mtd-report", tmp_path / "runs", "--out", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    assert "nan.json: malformed run record (metric nan, wall_s 1.0: expected a finite score" in r.stderr
    assert "inf.json: malformed run record (metric inf" in r.stderr
    assert "fifo.predictions.npz: predictions not readable (" in r.stderr
    assert "is a FIFO, not a regular file" in r.stderr
    assert "blocked.json: not readable JSON" in r.stderr
    table = (tmp_path / "report" / "runs.csv").read_text()
    assert "good" in table and "fifo" in table and "elsewhere" in table and "nan" not in table.split("\n", 1)[1]


def test_import_of_logits_beyond_float16_is_refused(tmp_path):
    logits = np.zeros((6, 2, 3), np.float32)
    logits[4, 1, 2] = 1e6  # 65504 is float16's largest
    np.save(tmp_path / "z.npy", logits)
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    r = run_cli("mtd-cache", "import", "--task", "mine", "--logits", tmp_path / "z.npy", "--labels",
                tmp_path / "y.npy", "--float16", "--out", tmp_path / "s.h5")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "mtd-cache: error: logits as float16: teacher 1 has a non-finite value (inf) at example 4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.npy", "z.npy"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"status": "done"}'], ids=["text", "list", "no-fields"])
def test_evaluating_a_record_that_is_not_one_is_one_line(tmp_path, content):
    folder = tmp_path / "runs" / "digits" / "resnet8"
    folder.mkdir(parents=True)
    (folder / "abc123.json").write_text(content)
    r = run_cli("mtd-train", "--evaluate", "abc", "--out", tmp_path / "runs")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"mtd-train: error: {folder / 'abc123.json'} is not a run "
                                                        "record (")


def test_a_record_that_is_not_an_object_is_not_a_finished_run(tiny, tmp_path):
    from mtd_cache.students.run import RunRequest, plan_run

    planned = plan_run(RunRequest(store=str(tiny["image"]), student="resnet8", teachers=(0,), out=str(tmp_path),
                                  overrides={"epochs": 1}, device="cpu"))
    planned.record.parent.mkdir(parents=True)
    planned.record.write_text("[1, 2]")
    r = run_cli("mtd-train", "--store", tiny["image"], "--student", "resnet8", "--teachers", "0", "--epochs", "1",
                "--device", "cpu", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(planned.record.read_text())["status"] == "done"


@pytest.mark.parametrize("content", ["[1]", "{not json", '{"task": "digits"}'], ids=["list", "text", "no-seed"])
def test_a_teacher_record_that_is_not_one_is_one_line(tmp_path, content):
    seed = tmp_path / "t" / "seed0"
    seed.mkdir(parents=True)
    (seed / "teacher.json").write_text(content)
    (seed / "model.safetensors").write_bytes(b"")
    r = run_cli("mtd-cache", "dump", "--task", "digits", "--teachers-dir", tmp_path / "t", "--out", tmp_path / "s.h5")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        f"mtd-cache: error: {seed / 'teacher.json'} is not a teacher's record (")
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.partial").exists()


@pytest.mark.parametrize("prog, args, message", [
    ("mtd-train", ["--store", "{tmp}/none.h5", "--student", "resnet8", "--teachers", "0"],
     "mtd-train: error: no store at {tmp}/none.h5 (write one with mtd-cache dump, or mtd-cache import)"),
    ("mtd-sweep", ["--store", "{tmp}/none.h5", "--student", "resnet8", "--pool", "0-1", "--out", "{tmp}/runs"],
     "mtd-sweep: error: no store at {tmp}/none.h5 (write one with mtd-cache dump, or mtd-cache import)"),
    ("mtd-report", ["{tmp}/none"], "mtd-report: error: Invalid value for 'RUNS_DIR': '{tmp}/none': is not a folder "
                                   "of run records (mtd-train and mtd-sweep write them with --out FOLDER)"),
    ("mtd-report", ["{tmp}/empty"], "mtd-report: error: no finished run records under {tmp}/empty (train students "
                                    "into it: mtd-train or mtd-sweep --out {tmp}/empty)"),
    ("mtd-cache", ["dump", "--task", "digits", "--teachers-dir", "{tmp}/none", "--out", "{tmp}/s.h5"],
     "mtd-cache: error: no teachers folder at {tmp}/none (train them with `mtd-cache teachers`)"),
    ("mtd-cache", ["dump", "--task", "digits", "--teachers-dir", "{tmp}/empty", "--out", "{tmp}/s.h5"],
     "mtd-cache: error: no finished teacher in {tmp}/empty (each needs model.safetensors and teacher.json: train "
     "them with mtd-cache teachers --out {tmp}/empty; --force accepts a rejected one)"),
])
def test_what_is_not_found_names_the_command_that_makes_it(prog, args, message, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli(prog, *(a.format(tmp=tmp_path) for a in args))
    assert (r.returncode, r.stderr.strip().splitlines()[-1]) == (2, message.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


def test_a_task_file_that_is_not_a_regular_file_says_so(tmp_path):
    (tmp_path / "folder.json").mkdir()
    os.mkfifo(tmp_path / "fifo.json")  # reading it would block: refused without opening it
    for name, what in (("folder.json", "is not a regular file"), ("fifo.json", "is not a regular file"),
                       ("missing.json", "not found")):
        r = run_cli("mtd-cache", "teachers", "--task", tmp_path / name, "--out", tmp_path / "t")
        assert (r.returncode, r.stderr.strip()) == (2, f"mtd-cache: error: task file {tmp_path / name} {what}")
    assert not (tmp_path / "t").exists()
