"""Vision end to end on tiny data: views, the logit cache, cached vs online KD, determinism, CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mtd_cache.core.errors import MtdError
from mtd_cache.core.losses import kd_loss
from mtd_cache.core.optim import lr_factor
from mtd_cache.models.factory import load_trained
from mtd_cache.models.inference import view_logits
from mtd_cache.store import TeacherStore
from mtd_cache.students.data import store_test_images
from mtd_cache.students.run import RunRequest, run_student
from mtd_cache.tasks.cifar import write_fake_cifar10
from mtd_cache.tasks.image_data import ImageData, image_fingerprint
from mtd_cache.tasks.images import get_image_task, load_split, view_table
from mtd_cache.teachers import find_teachers, train_teachers
from mtd_cache.teachers.dump import run_dump

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Three tiny digits teachers (ResNet-8, 2 epochs) and their 9-view store."""
    root = tmp_path_factory.mktemp("digits")
    train_teachers("digits", [0, 1, 2], root / "teachers", "resnet8", None, {"epochs": 2, "batch_size": 256})
    store = run_dump("digits", root / "teachers", root / "store.h5", [], {"chunk": 500})
    return root, store


def test_cached_logits_of_view_v_are_the_teachers_logits_on_that_view(digits):
    root, path = digits
    s = TeacherStore.open(path)
    teachers = find_teachers(root / "teachers")
    data = ImageData.load("digits", "train", None, torch.device("cpu"))
    views = torch.as_tensor(view_table(get_image_task("digits")))
    idx, v = torch.tensor([0, 7, 1436]), torch.tensor([4, 0, 8])
    model = load_trained(teachers[1].path, teachers[1].info, 10)
    with torch.no_grad():
        direct = model(data.batch(idx, views[v]))
    np.testing.assert_allclose(s.logits[idx.numpy(), v.numpy(), 1], direct.numpy(), rtol=1e-5, atol=1e-5)
    assert s.num_views == 9 and s.views.tolist()[4] == [1, 1, 0]  # the identity view is the centre
    assert 0 < s.teacher_forward_s < 1 and s.teacher_forward_j is None or s.teacher_forward_j > 0
    assert [t.seed for t in teachers] == [0, 1, 2] and list(s.attrs["teacher_seeds"]) == [0, 1, 2]
    np.testing.assert_allclose(s.dev_metric[1], TeacherStore.open(path).dev_metric[1])
    assert teachers[1].info["metric"] == pytest.approx(float(s.dev_metric[1]), abs=1e-6)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float16", 1e-3)])
def test_kd_from_the_store_equals_kd_from_online_teachers(digits, tmp_path, dtype, tol):
    root, path = digits
    if dtype == "float16":
        path = run_dump("digits", root / "teachers", tmp_path / "s16.h5", [], {"logits_dtype": "float16"})
    s = TeacherStore.open(path)
    data = ImageData.load("digits", "train", None, torch.device("cpu"))
    views = torch.as_tensor(s.views)
    idx, v = torch.arange(40, 72), torch.arange(32) % 9
    x = data.batch(idx, views[v])
    student_logits = torch.randn(32, 10)
    cached = torch.from_numpy(s.mean_logits([0, 2], idx.numpy(), v.numpy()))
    models = [load_trained(t.path, t.info, 10) for t in find_teachers(root / "teachers")]
    with torch.no_grad():
        online = (models[0](x) + models[2](x)) / 2
    assert float(kd_loss(student_logits, cached, 4.0)) == pytest.approx(float(kd_loss(student_logits, online, 4.0)),
                                                                          rel=tol, abs=tol)


def test_view_logits_batches_images_by_views():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    data = ImageData.load("digits", "train", None, torch.device("cpu"))
    views = torch.as_tensor(view_table(get_image_task("digits")))
    got = view_logits(net, data, torch.tensor([3, 5]), views, batch_size=4)  # batches split across images
    with torch.no_grad():
        want = net(data.batch(torch.tensor([5]), views[6:7]))
    assert got.shape == (2, 9, 3)
    np.testing.assert_allclose(got[1, 6], want[0].numpy(), rtol=1e-5, atol=1e-6)


def test_same_configuration_same_run_id_and_same_cpu_metric(digits, tmp_path):
    _, path = digits
    req = RunRequest(store=str(path), student="resnet8", teachers=(0, 2), seed=3, out=str(tmp_path),
                     overrides={"epochs": 1, "batch_size": 200})
    a = run_student(req)
    b = run_student(RunRequest(**{**req.__dict__, "force": True}))
    assert a["run_id"] == b["run_id"] and a["metric"] == b["metric"]
    assert a["k"] == 2 and a["teachers"] == [0, 2] and a["status"] == "done"
    assert 0 < a["history"][-1]["eval_s"] < a["history"][-1]["epoch_s"]  # the test pass, timed within the epoch
    assert a["config"]["recipe"]["temperature"] == 4.0 and a["store_fingerprint"] == TeacherStore.open(path).fingerprint
    c = run_student(RunRequest(**{**req.__dict__, "seed": 4}))
    assert c["run_id"] != a["run_id"]
    files = sorted(p.name for p in (tmp_path / "digits" / "resnet8").iterdir())
    assert files == sorted([f"{r}.{ext}" for r in (a["run_id"], c["run_id"])  # checkpoints removed once the
                            for ext in ("json", "metrics.csv", "predictions.npz")])  # record is written


def test_ce_only_baseline_and_online_run(digits, tmp_path):
    root, path = digits
    base = run_student(RunRequest(store=str(path), student="resnet8", teachers=(), out=str(tmp_path),
                                  overrides={"epochs": 1}))
    assert base["k"] == 0 and "kd" not in base["history"][0]
    online = run_student(RunRequest(store=str(path), student="resnet8", teachers=(1,), out=str(tmp_path),
                                    overrides={"epochs": 1}, online=True, teachers_dir=str(root / "teachers")))
    cached = run_student(RunRequest(store=str(path), student="resnet8", teachers=(1,), out=str(tmp_path),
                                    overrides={"epochs": 1}))
    assert online["run_id"] != cached["run_id"] and online["config"]["online"] is True
    assert online["history"][0]["kd"] == pytest.approx(cached["history"][0]["kd"], rel=1e-4)


def test_loaded_splits_are_kept_per_process_and_runs_leave_them_unchanged(digits, tmp_path):
    _, path = digits
    cpu = torch.device("cpu")
    train = ImageData.load("digits", "train", None, cpu)
    assert ImageData.load("digits", "train", None, cpu) is train  # a sweep worker parses each split once
    sub = ImageData.load("digits", "train", None, cpu, 100)
    assert sub is not train and len(sub) == 100 and torch.equal(sub.images, train.images[:100])
    fresh = ImageData._read("digits", "train", None, cpu, None)
    views = view_table(get_image_task("digits"))
    assert image_fingerprint(train, views) == image_fingerprint(fresh, views) == TeacherStore.open(path).fingerprint
    assert list(train.fingerprints.values()) == [TeacherStore.open(path).fingerprint]  # memoised on the split
    subsets = {}
    for n in (10, 20, 30, 40):  # more splits than are kept: the one in use stays, the least recently used goes
        subsets[n] = ImageData.load("digits", "train", None, cpu, n)
        assert ImageData.load("digits", "train", None, cpu) is train
    assert ImageData.load("digits", "train", None, cpu, 40) is subsets[40]
    assert ImageData.load("digits", "train", None, cpu, 10) is not subsets[10]
    before = train.images.clone(), train.labels.clone()
    run_student(RunRequest(store=str(path), student="resnet8", teachers=(0,), out=str(tmp_path),
                           overrides={"epochs": 1}))
    assert ImageData.load("digits", "train", None, cpu) is train
    assert torch.equal(train.images, before[0]) and torch.equal(train.labels, before[1])


def test_test_subset_dump_scores_teachers_and_students_on_the_same_images(digits, tmp_path):
    root, _ = digits
    path = run_dump("digits", root / "teachers", tmp_path / "s.h5", [], {"test_subset": 50})
    s = TeacherStore.open(path)
    _, test_labels = load_split("digits", "test")
    assert s.dev_logits.shape == (50, 3, 10) and s.spec.extra["test_subset"] == 50
    np.testing.assert_array_equal(s.dev_labels, test_labels[:50])
    rec = run_student(RunRequest(store=str(path), student="resnet8", teachers=(0, 1), out=str(tmp_path),
                                 overrides={"epochs": 1}))
    assert round(rec["metric"] * 50, 6) == round(rec["metric"] * 50)  # scored on 50 images
    full = SimpleNamespace(task="digits", task_file=None, data_dir=None, test_subset=None, dev_labels=s.dev_labels,
                           path=path)
    with pytest.raises(MtdError, match=r"test images found here \(360\) are not those .* \(50\)"):
        store_test_images(full, None, torch.device("cpu"))
    with pytest.raises(MtdError, match="unknown image dump setting 'student_layers'"):
        run_dump("digits", root / "teachers", tmp_path / "t.h5", [], {"student_layers": 4})
    with pytest.raises(MtdError, match="test subset 400 is outside 1..360"):
        run_dump("digits", root / "teachers", tmp_path / "u.h5", [], {"test_subset": 400})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "s.h5"]  # refusals wrote nothing


def test_lr_schedule_warmup_restored_and_legacy():
    steps = 10  # per epoch; milestones at epochs 2 and 3
    f = [lr_factor(s, steps, [2, 3], 4, 0.1, False) for s in (0, 3, 4, 19, 20, 29, 30)]
    assert f == pytest.approx([0.1, 0.1, 1.0, 1.0, 0.1, 0.1, 0.01])
    legacy = [lr_factor(s, steps, [2, 3], 4, 0.1, True) for s in (0, 4, 20, 30)]
    assert legacy == pytest.approx([0.1, 0.1, 0.01, 0.001])  # never back to the base rate


def test_fake_cifar_loader_reads_the_real_format(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train=25, n_test=7, seed=1)
    images, labels = load_split("cifar10", "train", data_dir=str(tmp_path), download=False)
    assert images.shape == (25, 3, 32, 32) and labels.shape == (25,)
    import pickle

    with open(folder / "data_batch_2", "rb") as f:
        b2 = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(images[5:10].reshape(5, -1), b2[b"data"])
    np.testing.assert_array_equal(labels[5:10], b2[b"labels"])
    assert len(view_table(get_image_task("cifar10"))) == 162
    assert len({tuple(r) for r in view_table(get_image_task("cifar10"))}) == 162


def _train_cli(*args):
    return subprocess.run([str(BIN / "mtd-train"), *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--teachers", "0,3"], "--teachers: index 3 out of range: the store has 3 teachers (0-2)"),
    (["--teachers", "0,0"], "--teachers: duplicate index 0 in '0,0'"),
    (["--teachers", ""], "--teachers: empty set of indices"),
    (["--teachers", "0,1", "--primary", "1"], "--primary 1 given, but this student takes no primary teacher"),
    (["--teachers", "0", "--set", "bogus=1"], "unknown setting 'bogus' for this student"),
])
@pytest.mark.slow
def test_train_cli_errors_are_one_line_exit_2(digits, tmp_path, args, message):
    _, path = digits
    r = _train_cli("--store", path, "--student", "resnet8", "--out", tmp_path, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("mtd-train: error: ") and message in r.stderr and r.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_train_cli_missing_store(tmp_path):
    r = _train_cli("--store", tmp_path / "none.h5", "--student", "resnet20", "--teachers", "0")
    missing = f"no store at {tmp_path / 'none.h5'} (write one with mtd-cache dump, or mtd-cache import)"
    assert (r.returncode, r.stderr.strip()) == (2, f"mtd-train: error: {missing}")
