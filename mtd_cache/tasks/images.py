"""Image tasks: one table, split loaders, and the discrete augmentation views.

The training augmentation of the CIFAR recipe (pad 4 with black pixels, random
32x32 crop, random horizontal flip; He et al. 2016, torchvision's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``) takes finitely many
values: 9 x 9 crop offsets x 2 flips = 162 *views*. A view is a row
(dy, dx, flip) of ``view_table``: the crop's top-left corner in the padded image
and whether it is mirrored. ``apply_views`` applies one view per image, batched,
on whatever device the batch lives: pad with zeros on the [0, 1] pixel scale,
crop, flip; ``normalize`` comes after, as ToTensor -> Normalize does in the
torchvision pipeline.
"""

from __future__ import annotations

import gzip
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MtdError

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("cache") / "data"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class ImageTask:
    name: str
    channels: int
    size: int
    label_names: tuple[str, ...]
    pad: int  # zero padding before the random crop
    flip: bool  # random horizontal flip
    mean: tuple[float, ...]  # normalisation, per channel, on the [0, 1] scale
    std: tuple[float, ...]
    metric: str = "accuracy"

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


IMAGE_TASKS = {
    # akamaster's trainer normalises CIFAR-10 with the ImageNet statistics; we follow the reference.
    "cifar10": ImageTask("cifar10", 3, 32, ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                            "ship", "truck"), 4, True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Pad 2 + flip: 5 x 5 x 2 = 50 views, a small set so a CPU dump stays affordable (N x V x T forwards).
    "fashion-mnist": ImageTask("fashion-mnist", 1, 28, ("t-shirt/top", "trouser", "pullover", "dress", "coat",
                                                        "sandal", "shirt", "sneaker", "bag", "ankle boot"),
                               2, True, (0.2860,), (0.3530,)),
    # 8x8 digits: pad 1, no flip (a mirrored digit is another symbol): 9 views. Train statistics.
    "digits": ImageTask("digits", 1, 8, tuple(str(d) for d in range(10)), 1, False, (0.3053,), (0.3759,)),
}


def get_image_task(name: str) -> ImageTask:
    if name not in IMAGE_TASKS:
        raise MtdError(f"unknown image task {name!r}; choose one of {', '.join(IMAGE_TASKS)}")
    return IMAGE_TASKS[name]


# ------------------------------------------------------------------------------------------ views


def view_table(task: ImageTask) -> np.ndarray:
    """(V, 3) int16 rows (dy, dx, flip), dy-major, then dx, then flip; (pad, pad, 0) is the identity."""
    flips = (0, 1) if task.flip else (0,)
    rows = [(dy, dx, f) for dy in range(2 * task.pad + 1) for dx in range(2 * task.pad + 1) for f in flips]
    return np.asarray(rows, dtype=np.int16)


def apply_views(x: torch.Tensor, views: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) under its own view (B, 3): zero-pad, crop at (dy, dx), flip.

    One gather for the whole batch: row index dy + i, column index dx + j, or
    dx + W - 1 - j when flipped.
    """
    b, _, h, w = x.shape
    views = views.to(device=x.device, dtype=torch.long)
    padded = F.pad(x, (pad, pad, pad, pad))
    i = torch.arange(h, device=x.device)
    j = torch.arange(w, device=x.device)
    rows = views[:, 0:1] + i  # (B, H)
    flip = views[:, 2:3].bool()
    cols = views[:, 1:2] + torch.where(flip, w - 1 - j, j)  # (B, W)
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put the channel axis last


def normalize(x: torch.Tensor, task: ImageTask) -> torch.Tensor:
    """[0, 1] images -> (x - mean) / std per channel."""
    mean = torch.tensor(task.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(task.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------ loaders


def load_split(task: ImageTask | str, split: str, data_dir: str | None = None,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in RAM: uint8 images (N, C, H, W) and int64 labels (N,)."""
    task = get_image_task(task) if isinstance(task, str) else task
    if split not in ("train", "test"):
        raise MtdError(f"unknown split {split!r} for {task.name}: train or test")
    loader = {"cifar10": _cifar10, "fashion-mnist": _fashion_mnist, "digits": _digits}[task.name]
    images, labels = loader(split, Path(data_dir) if data_dir else None, download)
    return np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def _digits(split: str, data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (values 0..16 scaled to 0..255), a fixed stratified 1437/360 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    idx_train, idx_test = train_test_split(np.arange(len(d.target)), test_size=360, stratify=d.target, random_state=0)
    idx = np.sort(idx_train if split == "train" else idx_test)
    return images[idx], d.target[idx]


def _find_cifar(data_dir: Path | None) -> Path | None:
    for cand in ([data_dir, data_dir / "cifar-10-batches-py"] if data_dir else []) + [DEFAULT_DATA / "cifar-10-batches-py"]:
        if cand is not None and (cand / "batches.meta").exists():
            return cand
    return None


def _cifar10(split: str, data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """The python-pickle CIFAR-10 (``cifar-10-batches-py``), downloaded by torchvision when online."""
    folder = _find_cifar(data_dir)
    if folder is None and download:
        root = data_dir or DEFAULT_DATA
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # no network: say where the files go
            log.debug("CIFAR-10 download failed: %s", exc)
        folder = _find_cifar(root)
    if folder is None:
        where = data_dir or DEFAULT_DATA
        raise MtdError(f"CIFAR-10 not found and not downloadable: put cifar-10-batches-py under {where} "
                       "(or pass --data-dir pointing at it)")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_unpickle(folder / n) for n in names]
    images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
    return images, np.concatenate([p[b"labels"] for p in parts])


def _unpickle(path: Path) -> dict:
    if not path.exists():
        raise MtdError(f"CIFAR-10 file {path} is missing")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def write_fake_cifar10(root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """A small ``cifar-10-batches-py`` in the real pickle format (tests; CIFAR cannot be had offline)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = np.array_split(np.arange(n_train), 5)
    for name, n in [(f"data_batch_{i + 1}", len(s)) for i, s in enumerate(sizes)] + [("test_batch", n_test)]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in IMAGE_TASKS["cifar10"].label_names],
                     b"num_cases_per_batch": 10000, b"num_vis": 3072}, f)
    return folder


_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _fashion_mnist(split: str, data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """IDX files from ``data_dir`` (torchvision's FashionMNIST/raw layout or flat), Debian's
    ``dataset-fashion-mnist`` under /usr/share/datasets/fashion-mnist, or torchvision's download."""
    candidates = [d for d in ([data_dir, data_dir / "FashionMNIST" / "raw"] if data_dir else [])]
    candidates += [DEBIAN_FASHION, DEFAULT_DATA / "FashionMNIST" / "raw"]
    for folder in candidates:
        found = [_idx_path(folder, n) for n in _FASHION_FILES[split]]
        if all(found):
            return _read_idx(found[0])[:, None], _read_idx(found[1])
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(data_dir or DEFAULT_DATA), train=split == "train", download=True)
            return _fashion_mnist(split, data_dir or DEFAULT_DATA, False)
        except MtdError:
            raise
        except Exception as exc:
            log.debug("Fashion-MNIST download failed: %s", exc)
    raise MtdError(f"Fashion-MNIST not found and not downloadable: install Debian's dataset-fashion-mnist, or put "
                   f"the IDX files under {data_dir or DEFAULT_DATA / 'FashionMNIST' / 'raw'}")


def _idx_path(folder: Path | None, stem: str) -> Path | None:
    if folder is None:
        return None
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format of (Fashion-)MNIST: magic (0, 0, dtype 0x08, ndim), big-endian sizes, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise MtdError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
