"""Image tasks: one table, whole-split loaders, and the discrete augmentation *views*.

The CIFAR training augmentation (He et al. 2016, section 4.2; torchvision's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` on the PIL image,
then ``ToTensor`` and ``Normalize``) takes finitely many values: a crop offset
(dy, dx) in 0..2*pad of the image zero-padded by ``pad`` on every side, and a
flip bit. CIFAR-10: 9 x 9 x 2 = 162 views. A teacher's logits are cached for
every view, so a student's KD target is the teacher's output on exactly the
image the student sees.

Order of operations, as torchvision's pipeline: pad with **black pixels**
(value 0 on the raw 0..255 scale, which ToTensor maps to 0.0), crop, flip,
*then* normalise. So padded pixels are 0 before normalisation and
``-mean/std`` after it. ``apply_views`` works on raw pixels, uint8 or [0, 1]
floats (zero is zero on both scales); ``normalize`` comes last.

akamaster's ``trainer.py`` flips *before* cropping; flipping then cropping at
dx equals cropping at 2*pad - dx then flipping, so both draw the same
distribution over these 162 images. A view here is always crop, then flip.
"""

from __future__ import annotations

import gzip
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MtdError
from .cifar import CIFAR10_LABELS, DEFAULT_DATA, load_cifar10

log = logging.getLogger(__name__)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


@dataclass(frozen=True)
class ImageTask:
    """One image classification task: shapes, labels, augmentation and normalisation."""

    name: str
    channels: int
    size: int  # images are size x size
    num_classes: int
    label_names: tuple[str, ...]
    pad: int  # zero padding on each side before the random size x size crop
    flip: bool  # random horizontal flip
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale (ToTensor's)
    std: tuple[float, ...]
    metric: str = "accuracy"
    test_split: str = "test"  # the held-out split teachers and students are scored on
    sizes: tuple[int, int] | None = None  # (train, test) images, when fixed
    source_loader: Callable[[bool, Path | None, bool], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, compare=False, repr=False)  # a built-in task's: (train?, data_dir, download) -> split
    kind: ClassVar[str] = "image"

    @property
    def num_views(self) -> int:
        return (2 * self.pad + 1) ** 2 * (2 if self.flip else 1)

    @property
    def num_labels(self) -> int:
        return self.num_classes

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        """Accuracy of logits (N, C) or class ids (N,) against gold labels."""
        pred = np.asarray(predictions)
        pred = pred.argmax(-1) if pred.ndim == 2 else pred
        return float((pred == np.asarray(labels)).mean())

    def load(self, split: str, data_dir: str | Path | None = None,
             download: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The split's images and labels as the source gives them (``load_split`` checks and logs them)."""
        if self.source_loader is None:
            raise MtdError(f"image task {self.name} has no loader")
        return self.source_loader(split == "train", Path(data_dir) if data_dir else None, download)




def get_image_task(name: str | ImageTask) -> ImageTask:
    """The built-in task named ``name`` (a task object passes through); an MtdError lists the valid names."""
    if isinstance(name, ImageTask):
        return name
    if name not in IMAGE_TASKS:
        raise MtdError(f"unknown image task {name!r}; choose one of {', '.join(IMAGE_TASKS)}")
    return IMAGE_TASKS[name]


# ------------------------------------------------------------------------------------------ views


def view_table(task: ImageTask) -> np.ndarray:
    """(V, 3) int16 rows (dy, dx, flip): dy slowest, then dx, then flip (0 before 1).

    (dy, dx) is the crop's top-left corner in the image padded by ``task.pad``,
    0..2*pad; (pad, pad, 0) is the unaugmented image. Stores save this table,
    so the order is part of the store format: never reorder it.
    """
    offsets = range(2 * task.pad + 1)
    flips = (0, 1) if task.flip else (0,)
    return np.array([(dy, dx, f) for dy in offsets for dx in offsets for f in flips], dtype=np.int16).reshape(-1, 3)


def apply_views(images: torch.Tensor, views: torch.Tensor, pad: int | ImageTask) -> torch.Tensor:
    """Image b of (B, C, H, W) under view ``views[b]`` = (dy, dx, flip): zero-pad, crop H x W at (dy, dx), mirror.

    Equal to torchvision's ``pad(img, pad)``, ``crop(img, dy, dx, H, W)`` and,
    if flagged, ``hflip`` on each image (tests check it). One ``gather`` for the
    whole batch on the batch's device: output pixel (i, j) reads padded pixel
    (dy + i, dx + j), or (dy + i, dx + W - 1 - j) when flipped. Any dtype; give
    raw pixels (uint8, or floats on [0, 1]) and normalise afterwards.
    """
    pad = pad.pad if isinstance(pad, ImageTask) else int(pad)
    b, c, h, w = images.shape
    if views.shape != (b, 3):
        raise ValueError(f"views must be ({b}, 3), got {tuple(views.shape)}")
    v = views.to(device=images.device, dtype=torch.long)
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros: black pixels
    i = torch.arange(h, device=images.device)
    j = torch.arange(w, device=images.device)
    rows = v[:, 0:1] + i  # (B, H)
    cols = v[:, 1:2] + torch.where(v[:, 2:3].bool(), w - 1 - j, j)  # (B, W)
    flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # (B, H, W) into the flattened padded image
    out = padded.flatten(2).gather(2, flat.view(b, 1, h * w).expand(b, c, h * w))
    return out.view(b, c, h, w)


def normalize(images: torch.Tensor, task: ImageTask) -> torch.Tensor:
    """(x - mean) / std per channel, as float32 (or the input's float dtype).

    uint8 pixels are first divided by 255 (torchvision's ``ToTensor``); float
    input is taken to be on [0, 1] already.
    """
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    elif not images.is_floating_point():
        raise TypeError(f"normalize takes uint8 pixels or [0, 1] floats, got {images.dtype}")
    mean = torch.tensor(task.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(task.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


# ------------------------------------------------------------------------------------------ loaders


def load_split(task: ImageTask | str, split: str, data_dir: str | Path | None = None,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in RAM: uint8 images (N, C, H, W) and int64 labels (N,), in the source's order.

    ``split`` is "train" or the task's test split. ``data_dir``: where to look
    (and download to); None means ``cache/data`` (and, for Fashion-MNIST,
    Debian's package). ``download=False`` never touches the network.
    """
    task = get_image_task(task) if isinstance(task, str) else task
    if data_dir is not None and not Path(data_dir).is_dir():  # never silently another folder (or none)
        raise MtdError(f"--data-dir {data_dir}: no such folder (for {task.name}; create it to download into it)")
    if split not in ("train", task.test_split):
        raise MtdError(f"unknown split {split!r} for {task.name}: train or {task.test_split}")
    images, labels = task.load(split, data_dir, download)
    images, labels = np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
    expected = (task.channels, task.size, task.size)
    if images.shape[1:] != expected or len(labels) != len(images):
        raise MtdError(f"{task.name} {split}: images {images.shape}, labels {labels.shape}; expected (N, *{expected})")
    if len(labels) and (labels.min() < 0 or labels.max() >= task.num_classes):
        raise MtdError(f"{task.name} {split}: labels outside 0..{task.num_classes - 1}")
    log.info("%s %s: %d images", task.name, split, len(labels))
    return images, labels


def _load_digits(train: bool, data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (UCI optdigits test set, 1,797 images), no files needed.

    Pixels are counts 0..16; they become uint8 round(v * 255 / 16), half up,
    so 16 is white (255) as in the other tasks. Split: a fixed stratified
    1,437 / 360 split (``train_test_split(random_state=0)``), each side in
    the original order.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    counts = d.images.astype(np.int64)  # exact small integers stored as float64
    images = ((counts * 255 + 8) // 16).astype(np.uint8)[:, None]
    tr, te = train_test_split(np.arange(len(d.target)), test_size=360, stratify=d.target, random_state=0)
    idx = np.sort(tr if train else te)
    return images[idx], d.target[idx]


# ------------------------------------------------------------------------------------------ Fashion-MNIST

_FASHION_STEMS = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _fashion_folders(data_dir: Path | None) -> list[Path]:
    """Where to look, in order: torchvision's layout, the folder itself, then Debian's package."""
    root = data_dir or DEFAULT_DATA
    return [root / "FashionMNIST" / "raw", root, DEBIAN_FASHION]


def _find_fashion(train: bool, data_dir: Path | None) -> tuple[Path, Path] | None:
    for folder in _fashion_folders(data_dir):
        found = [_idx_file(folder, stem) for stem in _FASHION_STEMS[train]]
        if all(found):
            return found[0], found[1]
    return None


def _load_fashion_mnist(train: bool, data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """IDX files (plain or .gz) from ``data_dir``, Debian's ``dataset-fashion-mnist``, or torchvision's download."""
    found = _find_fashion(train, data_dir)
    root = data_dir or DEFAULT_DATA
    if found is None and download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=train, download=True)  # into <root>/FashionMNIST/raw
        except Exception as exc:
            log.warning("Fashion-MNIST download into %s failed: %s", root, exc)
        found = _find_fashion(train, data_dir)
    if found is None:
        raise MtdError(f"Fashion-MNIST not found: put the IDX files under {root / 'FashionMNIST' / 'raw'}, "
                       f"or install Debian's dataset-fashion-mnist ({DEBIAN_FASHION})")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1:
        raise MtdError(f"{found[0]} / {found[1]}: expected (N, 28, 28) images and (N,) labels")
    return images[:, None], labels


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder`` (torchvision extracts; Debian ships .gz)."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (LeCun's MNIST format), plain or gzipped.

    Header: two zero bytes, type code 0x08 (uint8), number of dimensions d,
    then d big-endian uint32 sizes; then the data, row-major.
    """
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise MtdError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    if len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise MtdError(f"{path}: {len(data)} bytes do not hold an IDX array of shape {shape}")
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# ------------------------------------------------------------------------------------------ the built-in tasks

IMAGE_TASKS: dict[str, ImageTask] = {t.name: t for t in (
    # He et al.'s CIFAR recipe: pad 4 + flip, 162 views. Mean/std as the reference trainer (akamaster's
    # trainer.py normalises with ImageNet's statistics, not CIFAR-10's (0.4914, 0.4822, 0.4465) /
    # (0.2470, 0.2435, 0.2616)); a constant affine map the first BN absorbs, kept for reproducibility.
    ImageTask("cifar10", 3, 32, 10, CIFAR10_LABELS, 4, True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
              sizes=(50000, 10000), source_loader=load_cifar10),
    # Pad 2 + flip: 5 x 5 x 2 = 50 views. Pad 4 would be 162 views, 3.2x the dump (60,000 x V x T forwards)
    # and the store (60,000 x 162 x 6 x 10 float32 = 2.3 GB); pad 2 on 28 px shifts by up to 7%, close to
    # CIFAR's 4/32, on centred objects. Flip keeps every class (clothes and shoes face both ways).
    # Mean/std of the 60,000 training images (computed from the files).
    ImageTask("fashion-mnist", 1, 28, 10, ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                           "Shirt", "Sneaker", "Bag", "Ankle boot"), 2, True, (0.2860,), (0.3530,),
              sizes=(60000, 10000), source_loader=_load_fashion_mnist),
    # scikit-learn's 8x8 digits, needs nothing: pad 1, no flip (a mirrored digit is another symbol), 9 views.
    # Mean/std of all 1,797 images after scaling 0..16 to 0..255: a fixed constant, not refitted to the
    # split (the training split's are 0.3054 / 0.3760); changing it would change every digits model.
    ImageTask("digits", 1, 8, 10, tuple(str(d) for d in range(10)), 1, False, (0.3053,), (0.3759,),
              sizes=(1437, 360), source_loader=_load_digits),
)}
