"""Image tasks: the view tables, apply_views against torchvision, normalisation order, loaders."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from mtd_cache.core.errors import MtdError
from mtd_cache.tasks import images as im
from mtd_cache.tasks.cifar import write_fake_cifar10
from mtd_cache.tasks.images import IMAGE_TASKS, apply_views, get_image_task, load_split, normalize, view_table

CIFAR = get_image_task("cifar10")
DIGITS = get_image_task("digits")


def reference_view(img: torch.Tensor, view, pad: int) -> torch.Tensor:
    """One image (C, H, W) under one view, the obvious way."""
    dy, dx, flip = (int(v) for v in view)
    h, w = img.shape[1:]
    out = F.pad(img, (pad, pad, pad, pad))[:, dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


# ------------------------------------------------------------------------------------------ table


@pytest.mark.parametrize("name, count", [("cifar10", 162), ("fashion-mnist", 50), ("digits", 9)])
def test_view_counts_all_distinct(name, count):
    task = get_image_task(name)
    table = view_table(task)
    assert table.dtype == np.int16 and table.shape == (count, 3) == (task.num_views, 3)
    assert len({tuple(r) for r in table.tolist()}) == count
    assert table[:, :2].min() == 0 and table[:, :2].max() == 2 * task.pad


def test_view_order_is_fixed():
    table = view_table(CIFAR).tolist()
    assert table[:4] == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]] and table[-1] == [8, 8, 1]
    assert table.index([4, 4, 0]) == 80  # the identity, (pad, pad, no flip)
    assert view_table(DIGITS).tolist() == [[dy, dx, 0] for dy in range(3) for dx in range(3)]


def test_task_table():
    assert set(IMAGE_TASKS) == {"cifar10", "fashion-mnist", "digits"}
    for t in IMAGE_TASKS.values():
        assert len(t.label_names) == t.num_classes == 10 and len(t.mean) == len(t.std) == t.channels
        assert t.metric == "accuracy" and t.test_split == "test"
    assert (CIFAR.pad, CIFAR.flip, DIGITS.pad, DIGITS.flip) == (4, True, 1, False)
    with pytest.raises(MtdError, match="unknown image task 'mnist'; choose one of cifar10, fashion-mnist, digits"):
        get_image_task("mnist")


# ------------------------------------------------------------------------------------------ apply_views


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_apply_views_equals_per_image_reference(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 32, 32), generator=g).to(dtype)
    table = torch.as_tensor(view_table(CIFAR))
    views = table[torch.randint(len(table), (40,), generator=g)]
    got = apply_views(x, views, CIFAR.pad)
    assert got.dtype == dtype and got.shape == x.shape
    for b in range(40):
        assert torch.equal(got[b], reference_view(x[b], views[b], 4)), b


def test_apply_views_every_digits_view_on_non_square_input():
    x = torch.rand(9, 1, 8, 6)
    views = torch.as_tensor(view_table(DIGITS))
    got = apply_views(x, views, DIGITS)  # the task gives the padding
    for b in range(9):
        assert torch.equal(got[b], reference_view(x[b], views[b], 1))


def test_apply_views_equals_torchvision_pad_crop_hflip():
    x = torch.rand(4, 3, 32, 32)
    views = torch.tensor([[0, 0, 0], [8, 3, 1], [2, 7, 0], [5, 8, 1]])
    got = apply_views(x, views, 4)
    for b, (dy, dx, flip) in enumerate(views.tolist()):
        want = TF.crop(TF.pad(x[b], [4], fill=0), dy, dx, 32, 32)
        assert torch.equal(got[b], TF.hflip(want) if flip else want)


def test_pipeline_order_matches_torchvision_on_pil_images():
    """Pad the PIL image with black, crop, flip, ToTensor, Normalize == normalize(apply_views(uint8))."""
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    views = torch.tensor([[0, 0, 1], [8, 8, 0], [1, 6, 1]])
    got = normalize(apply_views(x, views, 4), CIFAR)
    for b, (dy, dx, flip) in enumerate(views.tolist()):
        pil = TF.crop(TF.pad(Image.fromarray(x[b].permute(1, 2, 0).numpy()), [4], fill=0), dy, dx, 32, 32)
        want = TF.normalize(TF.to_tensor(TF.hflip(pil) if flip else pil), list(CIFAR.mean), list(CIFAR.std))
        torch.testing.assert_close(got[b], want, rtol=0, atol=1e-6)
    corner = -torch.tensor(CIFAR.mean) / torch.tensor(CIFAR.std)  # a padded pixel: black, then normalised
    torch.testing.assert_close(got[1, :, -1, -1], corner)


def test_identity_view():
    x = torch.rand(5, 3, 32, 32)
    assert torch.equal(apply_views(x, torch.tensor([[4, 4, 0]] * 5), 4), x)
    assert torch.equal(apply_views(x, torch.tensor([[4, 4, 1]] * 5), 4), x.flip(-1))
    assert torch.equal(apply_views(x[:, :1, :8, :8], torch.tensor([[1, 1, 0]] * 5), DIGITS), x[:, :1, :8, :8])


def test_apply_views_rejects_a_wrong_view_shape():
    with pytest.raises(ValueError, match=r"views must be \(2, 3\)"):
        apply_views(torch.zeros(2, 1, 8, 8), torch.zeros(3, 3, dtype=torch.long), 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_apply_views_on_gpu_equals_cpu():
    x = torch.rand(64, 3, 32, 32)
    table = torch.as_tensor(view_table(CIFAR))
    views = table[torch.randint(len(table), (64,))]
    assert torch.equal(apply_views(x.cuda(), views.cuda(), 4).cpu(), apply_views(x, views, 4))


def test_normalize_uint8_equals_float_and_rejects_other_ints():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    a, b = normalize(x, CIFAR), normalize(x.float() / 255, CIFAR)
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-6)
    torch.testing.assert_close(a[:, 2], (x[:, 2].float() / 255 - 0.406) / 0.225)  # the reference: ImageNet stats
    with pytest.raises(TypeError):
        normalize(x.long(), CIFAR)


# ------------------------------------------------------------------------------------------ loaders


@pytest.mark.parametrize("where", ["root", "folder"])
def test_fake_cifar_round_trips_through_load_split(tmp_path, where):
    folder = write_fake_cifar10(tmp_path, n_train=23, n_test=7, seed=3)
    data_dir = tmp_path if where == "root" else folder
    x, y = load_split("cifar10", "train", data_dir=str(data_dir), download=False)
    xt, yt = load_split(CIFAR, "test", data_dir=data_dir, download=False)
    assert x.shape == (23, 3, 32, 32) and xt.shape == (7, 3, 32, 32)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and x.flags.c_contiguous
    batches = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    assert [len(b[b"labels"]) for b in batches] == [5, 5, 5, 4, 4]
    np.testing.assert_array_equal(x.reshape(23, -1), np.concatenate([b[b"data"] for b in batches]))
    np.testing.assert_array_equal(y, sum((b[b"labels"] for b in batches), []))
    test = _unpickle(folder / "test_batch")
    np.testing.assert_array_equal(xt[2, 1], test[b"data"][2, 1024:2048].reshape(32, 32))  # channel planes
    assert yt.tolist() == test[b"labels"]


def test_fake_cifar_is_a_python2_pickle_like_the_real_one(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train=5, n_test=1)
    with open(folder / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")  # torchvision's reading: Python 2 strings become str
    assert meta["label_names"] == list(CIFAR.label_names) and meta["num_vis"] == 3072
    assert set(_unpickle(folder / "test_batch")) == {b"batch_label", b"labels", b"data", b"filenames"}
    a = write_fake_cifar10(tmp_path / "a", 5, 1, seed=7)
    b = write_fake_cifar10(tmp_path / "b", 5, 1, seed=7)
    assert (a / "data_batch_1").read_bytes() == (b / "data_batch_1").read_bytes()  # seeded


def test_missing_cifar_offline_names_the_path(tmp_path):
    with pytest.raises(MtdError, match=f"CIFAR-10 not found in {tmp_path}: extract .*cifar-10-python.tar.gz"):
        load_split("cifar10", "train", data_dir=tmp_path, download=False)


def test_incomplete_cifar_names_the_missing_file(tmp_path):
    folder = write_fake_cifar10(tmp_path, 5, 1)
    (folder / "data_batch_3").unlink()
    with pytest.raises(MtdError, match="incomplete: data_batch_3 missing"):
        load_split("cifar10", "test", data_dir=tmp_path, download=False)


def test_unknown_split():
    with pytest.raises(MtdError, match="unknown split 'dev' for digits: train or test"):
        load_split("digits", "dev")


def test_digits_split_sizes_determinism_and_scale():
    x, y = load_split("digits", "train")
    xt, yt = load_split(DIGITS, "test")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8) and x.dtype == np.uint8
    assert DIGITS.sizes == (len(y), len(yt))  # the table's sizes are the splits'
    assert x.max() == 255 and x.min() == 0 and set(np.unique(x)) <= {(v * 255 + 8) // 16 for v in range(17)}
    x2, y2 = load_split("digits", "train")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.abs(np.bincount(yt, minlength=10) - 36).max() <= 1  # stratified: ~36 of each digit
    from sklearn.datasets import load_digits

    raw = load_digits()  # every image lands on exactly one side
    both = np.concatenate([x, xt]).reshape(1797, -1).astype(np.int64)
    assert sorted(map(bytes, both.astype(np.uint8))) == sorted(
        map(bytes, ((raw.images.reshape(1797, -1).astype(np.int64) * 255 + 8) // 16).astype(np.uint8)))
    assert np.mean(both / 255) == pytest.approx(DIGITS.mean[0], abs=1e-4)  # statistics of all 1,797 images
    assert np.std(both / 255) == pytest.approx(DIGITS.std[0], abs=1e-4)


def _write_idx(path, array: np.ndarray) -> None:
    body = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)


def test_fashion_mnist_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(im, "DEBIAN_FASHION", tmp_path / "no-debian")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6).astype(np.uint8)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", x)  # gzipped, as downloaded
    _write_idx(raw / "t10k-labels-idx1-ubyte", y)  # extracted, as torchvision leaves it
    got_x, got_y = load_split("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert np.array_equal(got_x[:, 0], x) and np.array_equal(got_y, y) and got_x.shape == (6, 1, 28, 28)
    with pytest.raises(MtdError, match="Fashion-MNIST not found: put the IDX files under"):
        load_split("fashion-mnist", "train", data_dir=tmp_path, download=False)


def test_idx_reader_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    with pytest.raises(MtdError, match="not an IDX file of unsigned bytes"):
        im.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(MtdError, match="do not hold"):
        im.read_idx(tmp_path / "short")


@pytest.mark.skipif(not (im.DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(tmp_path):
    x, y = load_split("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert x.shape == (10000, 1, 28, 28) and np.bincount(y).tolist() == [1000] * 10
    assert IMAGE_TASKS["fashion-mnist"].sizes[1] == len(y)
    assert y[:3].tolist() == [9, 2, 1]  # ankle boot, pullover, trouser: the file's known first labels


def _unpickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")
