"""Image data in memory: a whole split as uint8 tensors, its fingerprint, and an epoch's view-wise batches.

Teachers, the dump and image students all read their images through here: ``ImageData.batch`` applies
each image's view (``images.apply_views``) and the task's normalisation, and ``image_fingerprint`` is
what a store of cached logits is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.runtime import epoch_generator
from .fingerprint import task_fingerprint
from .images import DEFAULT_DATA, ImageTask, apply_views, get_image_task, load_split, normalize

_LOADED: dict[tuple, ImageData] = {}  # ImageData.load's splits, least recently used first
_KEEP_LOADED = 4  # a train and a test split of two tasks or subsets


@dataclass(eq=False)
class ImageData:
    """A split in memory: uint8 images (N, C, H, W) and int64 labels, on ``device``.

    ``load`` keeps the few splits it used last in this process: a sweep worker
    runs many students on the same data, and parsing or decompressing a split
    for each (about 25 ms for digits, 0.5-1 s for CIFAR-10 or Fashion-MNIST)
    would be paid per run. Loaded tensors are shared, so nothing may modify
    them in place (``batch`` copies). Their fingerprints are memoised likewise.
    """

    task: ImageTask
    images: torch.Tensor
    labels: torch.Tensor
    fingerprints: dict[bytes, str] = field(default_factory=dict, repr=False)  # view table bytes -> fingerprint

    @classmethod
    def load(cls, task: str | ImageTask, split: str, data_dir: str | None, device: torch.device,
             subset: int | None = None) -> ImageData:
        t = get_image_task(task)
        which = (t.name, (getattr(t, "source", None) or {}).get("sha256"), str(getattr(t, "base", "")))
        key = (which, split, str(Path(data_dir or DEFAULT_DATA).resolve()), subset, str(device))  # cwd-relative
        if key in _LOADED:
            _LOADED[key] = _LOADED.pop(key)  # now the most recently used
        else:
            if len(_LOADED) >= _KEEP_LOADED:
                del _LOADED[next(iter(_LOADED))]  # the least recently used
            _LOADED[key] = cls._read(t, split, data_dir, device, subset)
        return _LOADED[key]

    @classmethod
    def _read(cls, task: str | ImageTask, split: str, data_dir: str | None, device: torch.device,
              subset: int | None) -> ImageData:
        t = get_image_task(task)
        images, labels = load_split(t, split, data_dir=data_dir)
        if subset is not None:
            if not 0 < subset <= len(labels):
                raise MtdError(f"{split} subset {subset} is outside 1..{len(labels)}")
            images, labels = images[:subset], labels[:subset]
        return cls(t, torch.from_numpy(np.ascontiguousarray(images)).to(device),
                   torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device))

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """Normalised float images of ``idx``, each under its own view (None: unaugmented)."""
        x = self.images[idx].float().div_(255)
        if views is not None:
            x = apply_views(x, views, self.task.pad)
        return normalize(x, self.task)


def image_fingerprint(data: ImageData, views: np.ndarray) -> str:
    """What the cached logits depend on: task, pixels in order, labels and the view table (memoised on ``data``)."""
    views = np.asarray(views, dtype=np.int16)
    key = views.tobytes()
    if key not in data.fingerprints:
        fp = task_fingerprint(data.task).update("pixels", data.images.cpu().numpy())
        data.fingerprints[key] = fp.update("labels", data.labels.cpu().numpy()).update("views", views).hexdigest()
    return data.fingerprints[key]


def view_batches(n: int, num_views: int, batch_size: int, seed: int,
                 epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's batches: a seeded permutation and one random view index per image (last batch kept)."""
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g)
    views = torch.randint(num_views, (n,), generator=g)
    return [(order[i:i + batch_size], views[order[i:i + batch_size]]) for i in range(0, n, batch_size)]
