"""store/writer.py: one writer at a time, no stale pieces adopted, disk and permission faults as one line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from factories import BIN, cli, mounted, one_line_error

from mtd_cache.core.locks import file_lock
from mtd_cache.store import TeacherStore, diff_stores
from mtd_cache.teachers import find_teachers


def dump_args(root: Path, out: Path, teachers: str = "t") -> list:
    return ["dump", "--task", "digits", "--teachers-dir", root / teachers, "--out", out]


@contextmanager
def read_only(path: Path):
    src = path.with_name(path.name + "-src")
    src.mkdir(parents=True)
    with mounted(path, "--bind", source=str(src), kind=None):
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only here: {r.stderr.strip()}")
        yield path


def test_a_second_dump_of_the_same_output_is_refused_naming_the_first(digits_teacher_pairs, tmp_path):
    out = tmp_path / "d" / "s.h5"
    with file_lock(out.with_name("s.h5.lock")) as held:  # a first dump, as this process
        assert held
        r = cli(*dump_args(digits_teacher_pairs, out))
    assert r.returncode == 2
    assert f"{out} is being written by process {os.getpid()} on " in one_line_error(r)
    assert not out.exists() and not (tmp_path / "d" / "s.h5.partial").exists()


@pytest.mark.slow
def test_two_concurrent_dumps_leave_one_correct_store_and_nothing_else(digits_teacher_pairs, tmp_path):
    out = tmp_path / "d" / "s.h5"
    procs = [subprocess.Popen([str(BIN / "mtd-cache"), *map(str, dump_args(digits_teacher_pairs, out))],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the second either found it complete or was refused
    for code, err in results:
        if code == 2:
            assert "is being written by process" in err.strip().splitlines()[-1]
    assert diff_stores(out, digits_teacher_pairs / "clean.h5") == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.h5"]  # no partial folder, no lock file


@pytest.mark.slow
def test_a_partial_folder_without_its_spec_is_discarded_not_adopted(digits_teacher_pairs, tmp_path):
    out = tmp_path / "s.h5"
    # what two racing dumps of the old code left: a partial folder of pieces of teacher t, no spec.json
    first = cli(*dump_args(digits_teacher_pairs, tmp_path / "first.h5"), "--set", "chunk=200")
    assert first.returncode == 0
    partial = tmp_path / "s.h5.partial"
    partial.mkdir()
    with TeacherStore.open(tmp_path / "first.h5") as s:  # two of its pieces, as the dump wrote them
        np.savez(partial / "logits.t0.0000000000-0000000200.npz", values=np.asarray(s.logits[:200, :, 0]))
        np.savez(partial / "dev_logits.t0.npz", values=s.dev_logits[:, 0], metric=np.float64(s.dev_metric[0]))
    r = cli(*dump_args(digits_teacher_pairs, out, "t2"), "--set", "chunk=200")
    assert r.returncode == 0, r.stderr
    assert f"discarding {partial}: its pieces have no readable spec.json" in r.stderr
    with TeacherStore.open(out) as new, TeacherStore.open(tmp_path / "first.h5") as old:
        t2 = find_teachers(digits_teacher_pairs / "t2")
        np.testing.assert_allclose(new.dev_metric, [t.info["metric"] for t in t2])  # t2's own scores: not adopted
        assert not np.array_equal(new.logits[:200, :, 0], old.logits[:200, :, 0])


@pytest.mark.slow
def test_disk_too_small_for_an_image_store_is_refused_before_writing(digits_teacher_pairs, tmp_path):
    with mounted(tmp_path / "small", "-o", "size=1m") as small:
        r = cli(*dump_args(digits_teacher_pairs, small / "s.h5"))
        assert r.returncode == 3
        assert f"the store would take 1.09 MB and its pieces as much again while it is merged; {small} has" \
            in one_line_error(r)
        assert list(small.iterdir()) == []


@pytest.mark.slow
def test_disk_full_during_the_dump_is_one_line_exit_3_and_resumes(digits_teacher_pairs, tmp_path):
    """Shards fill the disk (the size check bypassed, as if another program filled it): exit 3, then resume."""
    code = ("import mtd_cache.teachers.dump as d; d.check_size = lambda *a: 0; "
            "from mtd_cache.cli.cache import main; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with mounted(tmp_path / "full", "-o", "size=600k") as full:
        r = subprocess.run([sys.executable, "-c", code, *map(str, dump_args(digits_teacher_pairs, full / "s.h5"))],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 3, r.stderr
        line = one_line_error(r)
        assert f"{full}/s.h5.partial/" in line and "No space left on device (free some space" in line
        assert not (full / "s.h5").exists() and (full / "s.h5.partial" / "spec.json").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(full)], check=True)
        again = cli(*dump_args(digits_teacher_pairs, full / "s.h5"))
        assert again.returncode == 0, again.stderr
        assert diff_stores(full / "s.h5", digits_teacher_pairs / "clean.h5") == []


@pytest.mark.slow
def test_disk_full_at_the_merge_is_refused_then_hdf5s_own_error_is_one_line(digits_teacher_pairs, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with mounted(tmp_path / "m", "-o", "size=1700k") as m:  # the pieces fit, the merged file does not
        patch = "import mtd_cache.teachers.dump as d; d.check_size = lambda *a: 0; "
        main = "from mtd_cache.cli.cache import main; main()"
        r = subprocess.run([sys.executable, "-c", patch + main, *map(str, dump_args(digits_teacher_pairs, m / "s.h5"))],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 3, r.stderr
        assert f"not enough free space to merge {m}/s.h5: it needs about" in one_line_error(r)
        # the same with the merge's own check bypassed too: HDF5 meets the full disk, no crash
        patch += "import mtd_cache.store.writer as w; w.StoreWriter._check_space = lambda self: None; "
        r = subprocess.run([sys.executable, "-c", patch + main, *map(str, dump_args(digits_teacher_pairs, m / "s.h5"))],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 3, r.stderr  # not 139 (a segmentation fault)
        line = one_line_error(r)
        assert f"writing {m}/s.h5.partial/merge.tmp failed" in line and "free some space" in line
        assert not (m / "s.h5.partial" / "merge.tmp").exists() and not (m / "s.h5").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(m)], check=True)
        assert cli(*dump_args(digits_teacher_pairs, m / "s.h5")).returncode == 0
        assert diff_stores(m / "s.h5", digits_teacher_pairs / "clean.h5") == []


def test_a_failing_write_names_the_file_and_exits_3(digits_teacher_pairs, tmp_path, monkeypatch, capsys):
    from mtd_cache.cli.cache import cli as cache_cli
    from mtd_cache.cli.common import run_command
    from mtd_cache.store import writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.np, "savez", full)
    with pytest.raises(SystemExit) as exit_:
        run_command(cache_cli, [str(a) for a in dump_args(digits_teacher_pairs, tmp_path / "s.h5")], prog="mtd-cache")
    assert exit_.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mtd-cache: error: {tmp_path}/s.h5.partial/") and "No space left on device" in err[-1]


@pytest.mark.slow
def test_read_only_folders_are_one_line_exit_2(digits_teacher_pairs, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        r = cli("teachers", "--task", "digits", "--model", "resnet8", "--seeds", "0", "--epochs", "1",
                "--out", ro / "teachers")
        assert r.returncode == 2 and "Read-only file system (the file system is read-only" in one_line_error(r)
        r = cli(*dump_args(digits_teacher_pairs, ro / "s.h5"))
        assert r.returncode == 2 and f"{ro}/s.h5.lock: Read-only file system" in one_line_error(r)
        runs = tmp_path / "runs" / "digits" / "resnet8"
        runs.mkdir(parents=True)
        (runs / "r.json").write_text('{"run_id": "r", "kind": "student", "task": "digits", "student": "resnet8", '
                                     '"teachers": [0], "primary": null, "k": 1, "seed": 0, "metric_name": '
                                     '"accuracy", "metric": 0.5, "wall_s": 1.0, "energy_j": null, "status": "done"}')
        r = subprocess.run([str(BIN / "mtd-report"), str(tmp_path / "runs"), "--out", str(ro / "report")],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "Read-only file system" in one_line_error(r)
