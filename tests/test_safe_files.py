"""No writes through links: a symbolic link (or a FIFO) planted where a command writes is one line, exit 2, and
the file it points to is untouched; links in the paths a user gives still work."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from cli_runner import Result, run_cli

from mtd_cache.students.run import RunRequest, plan_run

BIN = Path(sys.executable).parent
SECRET = b"the victim's own bytes\n"


@pytest.fixture
def digits(tiny) -> Path:
    """A folder with the digits teachers (``t``) and their store (``s.h5``)."""
    return tiny["image"].parent


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(SECRET)
    return victim


def _run(*args) -> Result:
    return run_cli(*args)  # in this process: the outcome is what matters here


def _one_line(r: Result) -> str:
    lines = r.stderr.strip().splitlines()
    assert lines and "Traceback" not in r.stderr, r.stderr
    return lines[-1]


def _train(digits: Path, out: Path, *extra) -> Result:
    return _run(BIN / "mtd-train", "--store", digits / "s.h5", "--student", "resnet8", "--teachers", "0,1",
                "--epochs", "1", "--device", "cpu", "--out", out, *extra)


@pytest.mark.parametrize("suffix", [".lock", ".json", ".ckpt.safetensors", ".metrics.csv", ".predictions.npz",
                                    ".model.safetensors"])
def test_a_link_at_any_file_of_a_run_is_refused_before_training(digits, tmp_path, suffix):
    out = tmp_path / "runs"
    planned = plan_run(RunRequest(store=str(digits / "s.h5"), student="resnet8", teachers=(0, 1), out=str(out),
                                  overrides={"epochs": 1}, device="cpu"))
    victim = _victim(tmp_path)
    link = planned.record.with_suffix(suffix)
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    r = _train(digits, out)
    assert r.returncode == 2
    assert _one_line(r) == (f"mtd-train: error: {link} is a symbolic link (to {victim}), where mtd-cache writes a "
                            "file: it never writes through a link; remove the link (its target is untouched)")
    assert victim.read_bytes() == SECRET and link.is_symlink()
    assert sorted(p.name for p in link.parent.iterdir()) == [link.name]  # nothing trained, nothing written


def test_a_link_at_a_folder_the_tool_names_is_refused(digits, tmp_path):
    out, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "digits").symlink_to(elsewhere)  # runs/<task> pointing out of the runs folder
    r = _train(digits, out)
    assert r.returncode == 2 and f"{out / 'digits'} is a symbolic link (to {elsewhere}), where mtd-cache writes a " \
                                 "folder" in _one_line(r)
    assert list(elsewhere.iterdir()) == []


def test_links_in_the_paths_a_user_gives_are_followed(digits, tmp_path):
    real = tmp_path / "real-runs"
    real.mkdir()
    (tmp_path / "runs").symlink_to(real)
    (tmp_path / "store.h5").symlink_to(digits / "s.h5")
    r = _run(BIN / "mtd-train", "--store", tmp_path / "store.h5", "--student", "resnet8", "--teachers", "0",
             "--epochs", "1", "--device", "cpu", "--out", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert len(list(real.rglob("*.json"))) == 1


def test_a_fifo_where_a_lock_goes_is_refused_not_waited_on(digits, tmp_path):
    out = tmp_path / "runs"
    planned = plan_run(RunRequest(store=str(digits / "s.h5"), student="resnet8", teachers=(0, 1), out=str(out),
                                  overrides={"epochs": 1}, device="cpu"))
    planned.lock.parent.mkdir(parents=True)
    os.mkfifo(planned.lock)
    r = _train(digits, out)
    assert r.returncode == 2 and _one_line(r) == (f"mtd-train: error: {planned.lock} is a FIFO, where mtd-cache "
                                                  "writes a file: remove it")


@pytest.mark.parametrize("what", ["lock", "store", "partial"])
def test_a_link_where_a_dump_writes_is_refused(digits, tmp_path, what):
    out = tmp_path / "d" / "s.h5"
    out.parent.mkdir()
    victim = _victim(tmp_path)
    if what == "partial":
        (tmp_path / "elsewhere").mkdir()
        victim = tmp_path / "elsewhere"
    link = {"lock": out.with_name("s.h5.lock"), "store": out, "partial": out.with_name("s.h5.partial")}[what]
    link.symlink_to(victim)
    r = _run(BIN / "mtd-cache", "dump", "--task", "digits", "--teachers-dir", digits / "t", "--out", out,
             "--train-subset", "40", "--test-subset", "20")
    assert r.returncode == 2
    kind = "folder" if what == "partial" else "store" if what == "store" else "file"
    assert f"{link} is a symbolic link (to {victim}), where mtd-cache writes a {kind}" in _one_line(r)
    assert link.is_symlink() and (victim.is_dir() and not list(victim.iterdir()) or victim.read_bytes() == SECRET)


def test_a_link_planted_as_the_merge_file_is_removed_not_written_through(digits, tmp_path, monkeypatch):
    """A dump resumed over a partial folder holding a link as merge.tmp: the link goes, its target stays."""
    from mtd_cache.store import writer

    out = tmp_path / "s.h5"
    args = ["dump", "--task", "digits", "--teachers-dir", digits / "t", "--out", out, "--train-subset", "40",
            "--test-subset", "20"]
    with monkeypatch.context() as mp:
        mp.setattr(writer.StoreWriter, "finish", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert _run(BIN / "mtd-cache", *args).returncode == 130
    victim = _victim(tmp_path)
    (tmp_path / "s.h5.partial" / "merge.tmp").symlink_to(victim)
    r = _run(BIN / "mtd-cache", *args)
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == SECRET and out.is_file() and not (tmp_path / "s.h5.partial").exists()


def test_a_link_as_the_sweeps_event_log_is_refused_before_the_first_job(digits, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    victim = _victim(tmp_path)
    (out / "sweep-events.jsonl").symlink_to(victim)
    r = _run(BIN / "mtd-sweep", "--store", digits / "s.h5", "--student", "resnet8", "--pool", "0-1", "--repeats", "1",
             "--epochs", "1", "--device", "cpu", "--out", out)
    assert r.returncode == 2 and f"{out / 'sweep-events.jsonl'} is a symbolic link (to {victim})" in _one_line(r)
    assert victim.read_bytes() == SECRET and not list(out.rglob("*.json"))


def test_a_link_in_a_teachers_folder_is_refused_before_training(tmp_path):
    victim = _victim(tmp_path)
    seed = tmp_path / "t" / "seed0"
    seed.mkdir(parents=True)
    (seed / "model.safetensors").symlink_to(victim)
    r = _run(BIN / "mtd-cache", "teachers", "--task", "digits", "--model", "resnet8", "--seeds", "0", "--epochs", "1",
             "--train-subset", "40", "--out", tmp_path / "t", "--device", "cpu")
    assert r.returncode == 2 and f"{seed / 'model.safetensors'} is a symbolic link (to {victim})" in _one_line(r)
    assert victim.read_bytes() == SECRET and sorted(p.name for p in seed.iterdir()) == ["model.safetensors"]


def test_a_link_in_a_report_folder_is_refused(tmp_path):
    runs = tmp_path / "runs" / "digits" / "resnet8"
    runs.mkdir(parents=True)
    (runs / "r.json").write_text('{"run_id": "r", "kind": "student", "task": "digits", "student": "resnet8", '
                                 '"teachers": [0], "primary": null, "k": 1, "seed": 0, "metric_name": "accuracy", '
                                 '"metric": 0.5, "wall_s": 1.0, "energy_j": null, "status": "done"}')
    report = tmp_path / "report"
    report.mkdir()
    victim = _victim(tmp_path)
    for name in ("summary.md", "summary.csv", "runs.md", "runs.csv"):
        (report / name).symlink_to(victim)
    r = _run(BIN / "mtd-report", tmp_path / "runs", "--out", report)
    assert r.returncode == 2 and "is a symbolic link (to" in _one_line(r)
    assert victim.read_bytes() == SECRET


def test_safe_files_primitives(tmp_path):
    from mtd_cache.core.safe_files import UnsafePath, append_line, open_regular

    victim = _victim(tmp_path)
    (tmp_path / "log").symlink_to(victim)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        append_line(tmp_path / "log", "x")
    append_line(tmp_path / "fresh", "a")
    append_line(tmp_path / "fresh", "b\n")
    assert (tmp_path / "fresh").read_text() == "a\nb\n" and victim.read_bytes() == SECRET
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePath, match="fifo is a FIFO, not a regular file"):
        with open_regular(tmp_path / "fifo"):
            pass
    with open_regular(tmp_path / "log") as f:  # reading follows a link (inputs may be links)
        assert f.read() == SECRET
