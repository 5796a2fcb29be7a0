"""Image tasks from folders: torchvision's ImageFolder layout, a sub-folder per class (a task file's "image" kind).

Classes are the sub-folders' names, sorted (label id = position), as ``torchvision.datasets.ImageFolder``
orders them; within a class, files are sorted by name. Every image is converted to one channel when the
whole training set is greyscale (three otherwise, or as ``"channels"`` says) and resized to
``image_size`` x ``image_size`` with bilinear interpolation (Pillow). The normalisation is the mean and
std per channel of the training pixels, computed once and recorded with the task in every store.
Decoded splits are kept per process (a sweep worker decodes a folder once).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MtdError
from ..core.safe_files import open_regular
from .images import ImageTask

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_DECODED: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (folder, size, channels, listing) -> split, oldest first
_KEEP_DECODED = 4


@dataclass(frozen=True)
class ImageFolderTask(ImageTask):
    """An image classification task over class folders; ``test`` is the task file's ``dev`` folder."""

    source: dict[str, Any] = field(default_factory=dict, repr=False)  # {"path", "content", "sha256"}
    base: Path = Path(".")

    @classmethod
    def build(cls, source: dict[str, Any], base: Path, resolved: dict[str, Any] | None) -> ImageFolderTask:
        c, where = source["content"], source["path"]
        size = _need(source, "image_size", int)
        if not 4 <= size <= 1024:
            raise MtdError(f"{where}: image_size {size}: expected 4 to 1024 pixels")
        views = c.get("views", {})
        if not isinstance(views, dict) or set(views) - {"pad", "flip"}:
            raise MtdError(f"{where}: views {views!r}: expected {{\"pad\": int, \"flip\": true or false}}")
        pad, flip = views.get("pad", min(4, size // 8)), views.get("flip", True)
        if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad <= size // 2:
            raise MtdError(f"{where}: views.pad {pad!r}: expected 0 to {size // 2} pixels")
        if not isinstance(flip, bool):
            raise MtdError(f"{where}: views.flip {flip!r}: expected true or false")
        if c.get("metric", "accuracy") != "accuracy":
            raise MtdError(f"{where}: metric {c['metric']!r}: image tasks are scored by accuracy")
        for key in ("train", "dev"):
            _need(source, key, str)
        fresh = resolved is None
        if fresh:
            resolved = _resolve(source, base, size)
        task = cls(name=c["name"], channels=int(resolved["channels"]), size=size,
                   num_classes=len(resolved["label_names"]), label_names=tuple(resolved["label_names"]), pad=pad,
                   flip=flip, mean=tuple(resolved["mean"]), std=tuple(resolved["std"]), source=source, base=base)
        if fresh:  # a file loaded now: the dev folder is checked (and decoded, kept) before any work
            task.load("test")
        return task

    def record(self) -> dict[str, Any]:
        return {**self.source, "resolved": {"label_names": list(self.label_names), "channels": self.channels,
                                            "mean": list(self.mean), "std": list(self.std)}}

    def folder(self, split: str, data_dir: str | Path | None = None) -> Path:
        base = Path(data_dir) if data_dir else self.base
        return base / self.source["content"]["train" if split == "train" else "dev"]

    def load(self, split: str, data_dir: str | Path | None = None,
             download: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The split's uint8 images (N, C, S, S) and label ids, classes checked against the task's (a folder is
        never downloaded)."""
        folder = self.folder(split, data_dir)
        classes = _classes(folder, self.source["path"])
        unknown = [c for c in classes if c not in self.label_names]
        if unknown:
            raise MtdError(f"{folder / unknown[0]}: class {unknown[0]!r} is not a class of task {self.name} "
                           f"(training has: {', '.join(self.label_names)})")
        return decode(folder, classes, self.size, self.channels, self.label_names)


def _need(source: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = source["content"].get(key)
    if value is None or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise MtdError(f"{source['path']}: {key} {value!r}: expected {'a ' + expected if value is None else expected}")
    return value


def _given_labels(source: dict[str, Any]) -> tuple[str, ...] | None:
    """The task file's ``labels``: None when it gives none; two or more distinct names, else one line."""
    labels = source["content"].get("labels")
    if "labels" not in source["content"] or labels is None:
        return None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, (str, int)) for x in labels) \
            or len(set(map(str, labels))) != len(labels):
        raise MtdError(f"{source['path']}: labels {labels!r}: expected a list of two or more distinct names "
                       "(or leave it out: the training labels, sorted)")
    return tuple(map(str, labels))


def _resolve(source: dict[str, Any], base: Path, size: int) -> dict[str, Any]:
    """Classes, channels and normalisation from the training folder."""
    c = source["content"]
    folder = base / c["train"]
    classes = _classes(folder, source["path"])
    names = list(_given_labels(source) or classes)
    if sorted(names) != sorted(classes):
        raise MtdError(f"{source['path']}: labels {names} are not the class folders of {folder}: {classes}")
    if len(names) < 2:
        raise MtdError(f"{folder}: {len(names)} class folder: a classification task needs two or more")
    channels = c.get("channels") or (1 if _all_grey(folder, classes) else 3)
    if channels not in (1, 3):
        raise MtdError(f"{source['path']}: channels {channels!r}: expected 1 or 3")
    images, _ = decode(folder, classes, size, channels, tuple(names))
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return {"label_names": names, "channels": channels, "mean": [round(float(m), 6) for m in mean],
            "std": [round(float(max(s, 1e-3)), 6) for s in std]}


def _classes(folder: Path, task_file: str) -> list[str]:
    if not folder.is_dir():
        raise MtdError(f"{folder}: no such folder (task file {task_file})")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MtdError(f"{folder}: no class folders (the ImageFolder layout: one sub-folder of images per class)")
    return classes


def _files(folder: Path, cls: str) -> list[Path]:
    files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MtdError(f"{folder / cls}: an empty class folder (no {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    return files


def _all_grey(folder: Path, classes: list[str]) -> bool:
    for cls in classes:
        for path in _files(folder, cls)[:50]:  # a sample: a folder is one kind of image
            if not _open(path, lambda im: im.mode in ("L", "1") or im.mode.startswith("I")):
                return False
    return True


def _open(path: Path, use: Any) -> Any:
    """``use(image)`` of the image at ``path``; an unreadable file, or one of more than Pillow's pixel limit
    (``Image.MAX_IMAGE_PIXELS``, 89 million: a decompression bomb would fill the memory), is one line naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refused, not warned
            with open_regular(path) as f, Image.open(f) as im:
                return use(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MtdError(f"{path}: too many pixels to decode ({' '.join(str(exc).split())[:120]})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MtdError(f"{path}: not a readable image ({' '.join(str(exc).split())[:100]})") from None


def decode(folder: Path, classes: list[str], size: int, channels: int,
           label_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``classes`` under ``folder``, decoded, converted and resized; kept per process."""
    files = [(label_names.index(cls), p) for cls in classes for p in _files(folder, cls)]
    listing = tuple((str(p), os.stat(p).st_mtime_ns, os.stat(p).st_size) for _, p in files)
    key = (str(folder.resolve()), size, channels, hash(listing))
    if key not in _DECODED:
        if len(_DECODED) >= _KEEP_DECODED:
            del _DECODED[next(iter(_DECODED))]
        _DECODED[key] = _decode(files, size, channels)
    return _DECODED[key]


def _decode(files: list[tuple[int, Path]], size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    def pixels(im: Any) -> np.ndarray:
        im = _eight_bit(im).convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    images = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i, (_, path) in enumerate(files):
        a = _open(path, pixels)
        images[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return images, np.array([label for label, _ in files], dtype=np.int64)


def _eight_bit(im: Any) -> Any:
    """A 16-bit greyscale image (PNG, TIFF: modes ``I;16*`` and ``I``) scaled to 8 bits, 65535 to 255; Pillow's own
    conversion clips every value over 255 to white."""
    from PIL import Image

    if not im.mode.startswith("I"):
        return im
    a = np.asarray(im, dtype=np.float64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError(f"{im.mode} pixels from {a.min():g} to {a.max():g}: not a 16-bit image")
    return Image.fromarray(np.rint(a * (255 / 65535)).astype(np.uint8), "L")
