"""Store hardening: one writer at a time, no stale pieces adopted, disk faults as one line, checksums, sanity.

Disk-full cases run on a small tmpfs and the read-only ones on a read-only bind mount; both need
root (CI runs as root) and are skipped, saying why, where mounting is refused.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from mtd_cache.core.errors import MtdError, StoreError
from mtd_cache.core.locks import file_lock
from mtd_cache.store import TeacherStore, diff_stores
from mtd_cache.teachers import find_teachers, train_teachers
from mtd_cache.teachers.importer import import_arrays

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two pairs of tiny digits teachers (t: seeds 0, 1; t2: seeds 5, 6) and a clean store of t."""
    root = tmp_path_factory.mktemp("hard")
    opts = {"epochs": 1, "train_subset": 200}
    train_teachers("digits", [0, 1], root / "t", "resnet8", None, opts, device="cpu")
    train_teachers("digits", [5, 6], root / "t2", "resnet8", None, opts, device="cpu")
    cli("dump", "--task", "digits", "--teachers-dir", root / "t", "--out", root / "clean.h5")
    return root


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mtd-cache"), *map(str, args)], capture_output=True, text=True, env=env)


def dump_args(root: Path, out: Path, teachers: str = "t") -> list:
    return ["dump", "--task", "digits", "--teachers-dir", root / teachers, "--out", out]


@contextmanager
def mounted(path: Path, *options: str, source: str = "tmpfs", kind: str | None = "tmpfs"):
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", *(["-t", kind] if kind else []), *options, source, str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount here ({' '.join(cmd)}: {r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def read_only(path: Path):
    src = path.with_name(path.name + "-src")
    src.mkdir(parents=True)
    with mounted(path, "--bind", source=str(src), kind=None):
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only here: {r.stderr.strip()}")
        yield path


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert lines and "Traceback" not in r.stderr, r.stderr
    return lines[-1]


# ----------------------------------------------------------------------------- one writer, no stale pieces


def test_a_second_dump_of_the_same_output_is_refused_naming_the_first(teachers, tmp_path):
    out = tmp_path / "d" / "s.h5"
    with file_lock(out.with_name("s.h5.lock")) as held:  # a first dump, as this process
        assert held
        r = cli(*dump_args(teachers, out))
    assert r.returncode == 2
    assert f"{out} is being written by process {os.getpid()} on " in one_line_error(r)
    assert not out.exists() and not (tmp_path / "d" / "s.h5.partial").exists()


def test_two_concurrent_dumps_leave_one_correct_store_and_nothing_else(teachers, tmp_path):
    out = tmp_path / "d" / "s.h5"
    procs = [subprocess.Popen([str(BIN / "mtd-cache"), *map(str, dump_args(teachers, out))],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the second either found it complete or was refused
    for code, err in results:
        if code == 2:
            assert "is being written by process" in err.strip().splitlines()[-1]
    assert diff_stores(out, teachers / "clean.h5") == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.h5"]  # no partial folder, no lock file


def test_a_partial_folder_without_its_spec_is_discarded_not_adopted(teachers, tmp_path):
    out = tmp_path / "s.h5"
    # what two racing dumps of the old code left: a partial folder of pieces of teacher t, no spec.json
    first = cli(*dump_args(teachers, tmp_path / "first.h5"), "--set", "chunk=200")
    assert first.returncode == 0
    partial = tmp_path / "s.h5.partial"
    partial.mkdir()
    with TeacherStore.open(tmp_path / "first.h5") as s:  # two of its pieces, as the dump wrote them
        np.savez(partial / "logits.t0.0000000000-0000000200.npz", values=np.asarray(s.logits[:200, :, 0]))
        np.savez(partial / "dev_logits.t0.npz", values=s.dev_logits[:, 0], metric=np.float64(s.dev_metric[0]))
    r = cli(*dump_args(teachers, out, "t2"), "--set", "chunk=200")
    assert r.returncode == 0, r.stderr
    assert f"discarding {partial}: its pieces have no readable spec.json" in r.stderr
    with TeacherStore.open(out) as new, TeacherStore.open(tmp_path / "first.h5") as old:
        t2 = find_teachers(teachers / "t2")
        np.testing.assert_allclose(new.dev_metric, [t.info["metric"] for t in t2])  # t2's own scores: not adopted
        assert not np.array_equal(new.logits[:200, :, 0], old.logits[:200, :, 0])


# ----------------------------------------------------------------------------- disk and permission faults


def test_disk_too_small_for_an_image_store_is_refused_before_writing(teachers, tmp_path):
    with mounted(tmp_path / "small", "-o", "size=1m") as small:
        r = cli(*dump_args(teachers, small / "s.h5"))
        assert r.returncode == 3
        assert f"the store would take 1.09 MB and its pieces as much again while it is merged; {small} has" \
            in one_line_error(r)
        assert list(small.iterdir()) == []


def test_disk_full_during_the_dump_is_one_line_exit_3_and_resumes(teachers, tmp_path):
    """Shards fill the disk (the size check bypassed, as if another program filled it): exit 3, then resume."""
    code = ("import mtd_cache.teachers.dump as d; d.check_size = lambda *a: 0; "
            "from mtd_cache.cli.cache import main; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with mounted(tmp_path / "full", "-o", "size=600k") as full:
        r = subprocess.run([sys.executable, "-c", code, *map(str, dump_args(teachers, full / "s.h5"))],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 3, r.stderr
        line = one_line_error(r)
        assert f"{full}/s.h5.partial/" in line and "No space left on device (free some space" in line
        assert not (full / "s.h5").exists() and (full / "s.h5.partial" / "spec.json").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(full)], check=True)
        again = cli(*dump_args(teachers, full / "s.h5"))
        assert again.returncode == 0, again.stderr
        assert diff_stores(full / "s.h5", teachers / "clean.h5") == []


def test_disk_full_at_the_merge_is_refused_then_hdf5s_own_error_is_one_line(teachers, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with mounted(tmp_path / "m", "-o", "size=1700k") as m:  # the pieces fit, the merged file does not
        patch = "import mtd_cache.teachers.dump as d; d.check_size = lambda *a: 0; "
        main = "from mtd_cache.cli.cache import main; main()"
        r = subprocess.run([sys.executable, "-c", patch + main, *map(str, dump_args(teachers, m / "s.h5"))],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 3, r.stderr
        assert f"not enough free space to merge {m}/s.h5: it needs about" in one_line_error(r)
        # the same with the merge's own check bypassed too: HDF5 meets the full disk, no crash
        patch += "import mtd_cache.store.writer as w; w.StoreWriter._check_space = lambda self: None; "
        r = subprocess.run([sys.executable, "-c", patch + main, *map(str, dump_args(teachers, m / "s.h5"))],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 3, r.stderr  # not 139 (a segmentation fault)
        line = one_line_error(r)
        assert f"writing {m}/s.h5.partial/merge.tmp failed" in line and "free some space" in line
        assert not (m / "s.h5.partial" / "merge.tmp").exists() and not (m / "s.h5").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(m)], check=True)
        assert cli(*dump_args(teachers, m / "s.h5")).returncode == 0
        assert diff_stores(m / "s.h5", teachers / "clean.h5") == []


def test_a_failing_write_names_the_file_and_exits_3(teachers, tmp_path, monkeypatch, capsys):
    from mtd_cache.cli.cache import cli as cache_cli
    from mtd_cache.cli.common import run_command
    from mtd_cache.store import writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.np, "savez", full)
    with pytest.raises(SystemExit) as exit_:
        run_command(cache_cli, [str(a) for a in dump_args(teachers, tmp_path / "s.h5")], prog="mtd-cache")
    assert exit_.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mtd-cache: error: {tmp_path}/s.h5.partial/") and "No space left on device" in err[-1]


def test_read_only_folders_are_one_line_exit_2(teachers, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        r = cli("teachers", "--task", "digits", "--model", "resnet8", "--seeds", "0", "--epochs", "1",
                "--out", ro / "teachers")
        assert r.returncode == 2 and "Read-only file system (the file system is read-only" in one_line_error(r)
        r = cli(*dump_args(teachers, ro / "s.h5"))
        assert r.returncode == 2 and f"{ro}/s.h5.lock: Read-only file system" in one_line_error(r)
        runs = tmp_path / "runs" / "digits" / "resnet8"
        runs.mkdir(parents=True)
        (runs / "r.json").write_text('{"run_id": "r", "kind": "student", "task": "digits", "student": "resnet8", '
                                     '"teachers": [0], "primary": null, "k": 1, "seed": 0, "metric_name": '
                                     '"accuracy", "metric": 0.5, "wall_s": 1.0, "energy_j": null, "status": "done"}')
        r = subprocess.run([str(BIN / "mtd-report"), str(tmp_path / "runs"), "--out", str(ro / "report")],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "Read-only file system" in one_line_error(r)


# ----------------------------------------------------------------------------- integrity


def _rehashed(f: h5py.File, name: str, where, value) -> None:
    """An edit with the dataset's checksum recomputed: what only the checks of the values can catch."""
    from mtd_cache.store.integrity import hash_dataset

    f[name][where] = value
    f[name].attrs["sha256"] = hash_dataset(f[name])


def _unseal(f: h5py.File) -> None:
    for name in ("seal_json", "seal_sha256"):
        del f.attrs[name]


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_a_flipped_byte_in_the_logits_is_caught_on_open(teachers, tmp_path):
    path = _copy(teachers / "clean.h5", tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        offset = f["logits"].id.get_offset()
        value = float(f["logits"][3, 2, 1, 4])
    with open(path, "r+b") as fh:  # the lowest mantissa byte of logits[0, 0, 0, 0]: still finite
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))
    with h5py.File(path, "r") as f:
        assert np.isfinite(f["logits"][0, 0, 0, 0]) and float(f["logits"][3, 2, 1, 4]) == value
    with pytest.raises(StoreError, match=r"the dataset logits does not match its checksum \(sha256 .*the file was "
                                         r"changed or damaged"):
        TeacherStore.open(path)
    r = cli("inspect", path, "--verify")
    assert r.returncode == 2 and "logits does not match its checksum" in one_line_error(r)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.attrs.__setitem__("num_labels", 7), r"the num_labels attribute \(7\) disagrees with the spec the "
                                                     "dump recorded"),
    (lambda f: _rehashed(f, "dev/logits", (4, 1, 3), np.nan), r"dev/logits: teacher 1 has a non-finite value \(nan\) "
                                                              r"at example 4"),
    (lambda f: _rehashed(f, "examples/label", 5, 42), "examples/label holds 42 at example 5, outside the classes 0..9"),
    (lambda f: f.attrs.__delitem__("fingerprint"), "lacks the attribute 'fingerprint': not a complete"),
    (lambda f: f.__delitem__("logits"), "lacks the dataset 'logits': not a complete"),
    (lambda f: f["views"].__setitem__((0, 0), 2), "the dataset views does not match its checksum"),
], ids=["num_labels", "dev-nan", "label-42", "no-fingerprint", "no-logits", "views-edited"])
def test_edited_stores_are_refused_in_one_line(teachers, tmp_path, edit, message):
    path = _copy(teachers / "clean.h5", tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        edit(f)
        _unseal(f)  # the checks behind the seal (which names any edit first: tests/test_integrity.py)
    with pytest.raises(StoreError, match=message):
        TeacherStore.open(path)
    r = cli("inspect", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_stores_without_checksums_still_open_and_say_so(teachers, tmp_path):
    path = _copy(teachers / "clean.h5", tmp_path / "old.h5")
    with h5py.File(path, "r+") as f:  # as written before checksums existed
        f.visititems(lambda name, obj: obj.attrs.__delitem__("sha256") if "sha256" in obj.attrs else None)
        _unseal(f)
    TeacherStore.open(path).close()
    r = cli("inspect", path, "--verify")
    assert r.returncode == 0 and "no checksums recorded" in r.stdout
    assert "7 datasets verified: all match" in cli("inspect", teachers / "clean.h5", "--verify").stdout


def test_primary_states_are_verified_when_the_dump_finishes_and_by_inspect(tmp_path, monkeypatch):
    from mtd_cache.store import PrimarySpec, StoreSpec, StoreWriter, writer

    ps = PrimarySpec(hidden_size=4, hidden_layers=(0, 1), attn_layers=(1,), num_heads=2)
    spec = StoreSpec(task="mrpc", metric="accuracy", label_names=("0", "1"), num_examples=3, num_teachers=1,
                     fingerprint="f" * 64, primaries={0: ps})

    def write(out: Path) -> Path:
        w = StoreWriter.open(out, spec)
        lengths = np.array([2, 3, 1])
        w.put_logits(0, 0, np.zeros((3, 2), np.float32))
        w.put_primary(0, 0, lengths, np.ones((12, 4), np.float16), np.ones((28,), np.float16))
        w.put("examples/label", np.array([0, 1, 0]))
        return w.finish()

    path = write(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f["primary/0/hidden"][5, 2] = 7.0
    r = cli("inspect", path, "--verify")
    assert r.returncode == 2 and "the dataset primary/0/hidden does not match its checksum" in one_line_error(r)
    real = writer.verify_file
    monkeypatch.setattr(writer, "verify_file", lambda p, names: {**real(p, names), "bad": ["primary/0/attn"]})
    with pytest.raises(StoreError, match=r"primary/0/attn read back from .*merge.tmp does not match what was written"):
        write(tmp_path / "t.h5")
    assert not (tmp_path / "t.h5").exists() and not (tmp_path / "t.h5.partial" / "merge.tmp").exists()


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize("logits, labels, message", [
    (np.zeros((4, 9, 2, 10), dtype=np.int64), np.zeros(4, int), "logits have dtype int64: expected raw "
                                                               "floating-point logits"),
    (np.zeros((0, 9, 2, 10), np.float32), np.zeros(0, int), r"logits have shape \(0, 9, 2, 10\): no examples"),
    (np.zeros((4, 2, 10), np.float32), np.zeros(4, int), r"digits is an image task: its logits need a view axis, "
                                                         r"\(N, V, T, C\) with --views"),
], ids=["integer", "empty", "no-views"])
def test_import_refuses_what_no_student_can_train_on(tmp_path, logits, labels, message):
    views = np.zeros((9, 3), np.int16) if logits.ndim == 4 else None
    with pytest.raises(MtdError, match=message):
        import_arrays(tmp_path / "s.h5", "digits", logits, labels, views=views)
    assert list(tmp_path.iterdir()) == []
