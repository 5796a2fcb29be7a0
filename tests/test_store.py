"""The teacher store: round trips, crash-safe resume, refusals."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import store_child as child

from mtd_cache.core.errors import StoreError
from mtd_cache.store import (
    Fingerprint,
    PrimarySpec,
    StoreSpec,
    StoreWriter,
    TeacherStore,
    check_finite_logits,
    diff_stores,
    partial_dir,
    write_store,
)

HERE = Path(__file__).parent


def _spec(**kw) -> StoreSpec:
    base = dict(task="toy", metric="accuracy", label_names=("a", "b", "c"), num_examples=6, num_teachers=4,
                fingerprint="f" * 64, num_dev=2, teacher_seeds=(0, 1, 2, 3))
    return StoreSpec(**{**base, **kw})


def _toy(tmp_path: Path, name: str = "s.h5", **kw) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    spec = _spec(**kw)
    z = rng.normal(size=spec.logits_shape()).astype(np.float32)
    dev = rng.normal(size=(2, 4, 3))
    views = np.array([[0, 0, 0], [1, 1, 1]], dtype=np.int16) if spec.num_views else None
    path = write_store(tmp_path / name, spec, z, np.arange(6) % 3, dev_logits=dev, dev_labels=np.array([0, 2]),
                       dev_metric=[0.1, 0.2, 0.3, 0.4], views=views)
    return path, z


def test_round_trip_text_store(tmp_path):
    path, z = _toy(tmp_path)
    with TeacherStore.open(path) as s:
        assert (s.num_examples, s.num_teachers, s.num_classes, s.num_views) == (6, 4, 3, 0)
        assert s.task == "toy" and s.label_names == ["a", "b", "c"] and s.fingerprint == "f" * 64
        np.testing.assert_array_equal(s.labels, [0, 1, 2, 0, 1, 2])
        np.testing.assert_array_equal(s.sources, np.arange(6))  # no augmentation: own source
        np.testing.assert_array_equal(s.logits, z)
        np.testing.assert_allclose(s.dev_metric, [0.1, 0.2, 0.3, 0.4])
        assert isinstance(s.logits, np.memmap)  # shared through the page cache, not copied


def test_mean_logits_is_the_mean_of_the_chosen_teachers(tmp_path):
    path, z = _toy(tmp_path)
    s = TeacherStore.open(path)
    idx = np.array([4, 1, 1])
    got = s.mean_logits([0, 2, 3], idx)
    want = (z[idx, 0] + z[idx, 2] + z[idx, 3]) / 3
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(s.mean_logits([3, 0, 2], idx), got)  # order does not matter
    np.testing.assert_array_equal(s.mean_logits([2], idx), z[idx, 2])  # k = 1: that teacher
    assert got.dtype == np.float32 and got.shape == (3, 3)


def test_image_store_gathers_the_view_of_each_example(tmp_path):
    path, z = _toy(tmp_path, num_views=2)
    s = TeacherStore.open(path)
    got = s.mean_logits([1, 3], index=[0, 5], view=[1, 0])
    np.testing.assert_allclose(got, [(z[0, 1, 1] + z[0, 1, 3]) / 2, (z[5, 0, 1] + z[5, 0, 3]) / 2], rtol=1e-6)
    np.testing.assert_array_equal(s.views, [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(StoreError, match="2 views per example: pass view="):
        s.mean_logits([0], [0])
    with pytest.raises(IndexError, match="out of range \\(6 examples, 2 views\\)"):
        s.mean_logits([0], [0], view=[2])  # view 2 of example 0 is not example 1's view 0
    with pytest.raises(IndexError, match=r"teachers \[0, 4\] out of range 0..3"):
        s.mean_logits([4, 0], [0], view=[0])


def test_store_pickles_as_its_path(tmp_path):
    path, z = _toy(tmp_path)
    s = pickle.loads(pickle.dumps(TeacherStore.open(path)))
    assert len(pickle.dumps(TeacherStore.open(path))) < 1000  # not the logits
    np.testing.assert_array_equal(s.logits, z)


def _run_child(out: Path, kill_after: str | None = None) -> str:
    proc = subprocess.Popen([sys.executable, str(HERE / "store_child.py"), str(out)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}"})
    last = ""
    for line in proc.stdout:
        last = line.strip()
        if kill_after is not None and last == kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    return last


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory) -> Path:
    """An uninterrupted dump (in a child process, as the killed ones): what every resumed one must equal."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    _run_child(out)
    return out


@pytest.mark.parametrize("kill_after", ["logits 0 0", "logits 1 250", "logits 2 550", "primary 300", "merging"])
@pytest.mark.slow
def test_sigkilled_dump_resumes_to_the_same_store(tmp_path, reference_store, kill_after):
    out = tmp_path / "s.h5"
    assert _run_child(out, kill_after) == kill_after
    assert not out.exists() or kill_after == "merging"  # the name appears only when complete
    with pytest.raises(StoreError, match="unfinished dump"):
        if not out.exists():
            TeacherStore.open(out)
        else:
            raise StoreError("unfinished dump (the merge finished before the kill)")
    assert _run_child(out) == "done"
    assert diff_stores(out, reference_store) == []
    assert not partial_dir(out).exists()


def test_resumed_logits_skip_finished_shards(tmp_path):
    out = tmp_path / "s.h5"
    _run_child(out, "logits 1 0")
    printed = subprocess.run([sys.executable, str(HERE / "store_child.py"), str(out)], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}"}).stdout
    assert "logits 0 " not in printed and "logits 1 0\n" not in printed and "logits 1 50" in printed


def test_primary_states_round_trip_and_prefetch(reference_store):
    s = TeacherStore.open(reference_store)
    p = s.primary(1)
    assert p.hidden_layers == (0, 2) and p.attn_layers == (2,) and p.num_heads == 2
    np.testing.assert_array_equal(p.lengths, child.LENGTHS)
    idx = [17, 3, 599]
    batch = p.read(idx)
    rows = 0
    for i, n in zip(idx, batch.lengths, strict=True):
        a = i // child.CHUNK * child.CHUNK
        lengths, hidden, _ = child.states(a, a + child.CHUNK)
        lo = int(lengths[: i - a].sum()) * 2
        np.testing.assert_array_equal(batch.hidden[rows:rows + 2 * n], hidden[lo:lo + 2 * n])
        rows += 2 * n
    assert rows == len(batch.hidden) and batch.attn.shape == (int((batch.lengths.astype(int) ** 2).sum()) * 2,)
    got = list(p.iter_batches([idx, [0, 1]], depth=2))
    np.testing.assert_array_equal(got[0].hidden, batch.hidden)
    np.testing.assert_array_equal(got[1].attn, p.read([0, 1]).attn)
    with pytest.raises(StoreError, match="no states of primary teacher 0 .it has: 1"):
        s.primary(0)


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "s.h5"
    _run_child(out, "logits 0 0")
    other = child.spec().to_json() | {"num_dev": 11}
    with pytest.raises(StoreError, match=r"unfinished dump with other settings \(num_dev\); remove it"):
        StoreWriter.open(out, StoreSpec.from_json(other))


def test_finish_refuses_missing_work(tmp_path):
    w = StoreWriter.open(tmp_path / "s.h5", _spec(num_dev=0))
    w.put_logits(0, 0, np.zeros((4, 3)))
    w.put("examples/label", np.zeros(6, dtype=int))
    with pytest.raises(StoreError, match="teacher 0 logits lacks examples 4..5"):
        w.finish()
    assert not (tmp_path / "s.h5").exists() and not (partial_dir(tmp_path / "s.h5") / "merge.tmp").exists()


def test_truncated_file_is_refused(tmp_path):
    path, _ = _toy(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(StoreError, match="truncated"):
        TeacherStore.open(path)


def test_wrong_format_and_version_are_refused(tmp_path):
    path, _ = _toy(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 99
    with pytest.raises(StoreError, match="store version 99; this mtd-cache reads version 1"):
        TeacherStore.open(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "other"
    with pytest.raises(StoreError, match="not an mtd-cache store .format attribute 'other'"):
        TeacherStore.open(path)
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5 store"):
        TeacherStore.open(tmp_path / "x.h5")
    with pytest.raises(StoreError, match="no store at"):
        TeacherStore.open(tmp_path / "missing.h5")


def test_nan_logits_are_refused_naming_teacher_and_example(tmp_path):
    spec = _spec(num_dev=0)
    z = np.zeros(spec.logits_shape(), dtype=np.float32)
    z[4, 2, 1] = np.nan
    with pytest.raises(StoreError, match=r"teacher 2 has a non-finite value \(nan\) at example 4"):
        write_store(tmp_path / "w.h5", spec, z, np.zeros(6, dtype=int))
    assert not (tmp_path / "w.h5").exists() and not partial_dir(tmp_path / "w.h5").exists()
    with pytest.raises(StoreError, match=r"logits as float32: teacher 2 has a non-finite value \(nan\) at example 4"):
        StoreWriter.open(tmp_path / "r.h5", spec).put_logits(2, 0, z[:, 2])  # each piece is checked
    write_store(tmp_path / "r.h5", spec, np.zeros_like(z), np.zeros(6, dtype=int))
    with h5py.File(tmp_path / "r.h5", "r+") as f:  # a store edited afterwards: the reader checks
        f["logits"][4, 2, 1] = np.nan
    with pytest.raises(StoreError, match=r"teacher 2 has a non-finite value \(nan\) at example 4"):
        TeacherStore.open(tmp_path / "r.h5")
    with pytest.raises(StoreError, match=r"train logits: teacher 2 has a non-finite value \(inf\) at example 104"):
        chunk = np.where(z[:, 2] == z[:, 2], z[:, 2], np.inf)  # a dump's chunk
        check_finite_logits(chunk, "train logits", 100, teacher=2)


def test_finite_scan_runs_once_per_file_version_and_catches_a_later_edit(tmp_path, monkeypatch):
    from mtd_cache.store import validate

    spec = _spec(num_dev=0)
    z = np.zeros(spec.logits_shape(), dtype=np.float32)
    path = write_store(tmp_path / "s.h5", spec, z, np.zeros(6, dtype=int))
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return check_finite_logits(*args, **kwargs)

    monkeypatch.setattr(validate, "check_finite_logits", counting)
    TeacherStore.open(path).close()
    TeacherStore.open(path).close()
    assert calls == [str(path)]  # the second open trusts the first scan
    before = os.stat(path)
    with h5py.File(path, "r+") as f:  # an edit in place: same size, new modification time
        f["logits"][4, 2, 1] = np.nan
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # the clock may not tick within a few ms
    with pytest.raises(StoreError, match=r"teacher 2 has a non-finite value \(nan\) at example 4"):
        TeacherStore.open(path)
    assert len(calls) == 2
    TeacherStore.open(path, check_finite=False).close()  # asked not to scan: opens


def test_fingerprint_mismatch_names_both_values(tmp_path):
    path, _ = _toy(tmp_path)
    with pytest.raises(StoreError, match=f"store fingerprint {'f' * 64} != expected abc"):
        TeacherStore.open(path, expect_fingerprint="abc")


def test_fingerprint_depends_on_order_names_and_values():
    a = Fingerprint().update("x", np.arange(3)).update("y", "bert").hexdigest()
    assert a == Fingerprint().update("x", np.arange(3)).update("y", "bert").hexdigest()
    assert a != Fingerprint().update("y", "bert").update("x", np.arange(3)).hexdigest()
    assert a != Fingerprint().update("x", np.arange(3)[::-1]).update("y", "bert").hexdigest()
    assert a != Fingerprint().update("x", np.arange(3, dtype=np.int32)).update("y", "bert").hexdigest()


def test_primary_block_shapes_are_checked(tmp_path):
    w = StoreWriter.open(tmp_path / "s.h5", _spec(primaries={0: PrimarySpec(8, (4,), (4,), 2)}))
    with pytest.raises(StoreError, match=r"hidden block \(5, 8\) does not match lengths \(expected \(6, 8\)\)"):
        w.put_primary(0, 0, np.array([2, 4]), np.zeros((5, 8)), np.zeros(40))
    with pytest.raises(StoreError, match=r"attention block \(39,\) does not match lengths \(40,\)"):
        w.put_primary(0, 0, np.array([2, 4]), np.zeros((6, 8)), np.zeros(39))
