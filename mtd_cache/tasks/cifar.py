"""CIFAR-10's python batches: found in a data folder, read without running code, and written small for tests.

CIFAR's batches are Python pickles (Krizhevsky's ``cifar-10-python.tar.gz``), and a data folder is
something people share: they are read with ``_CifarUnpickler``, which loads what a batch holds (dicts,
lists, strings, numbers, numpy arrays) and refuses any other global a file names, as
``torch.load(weights_only=True)`` does. No md5 check: tests write small batches, and the store's
fingerprint of the pixels guards what was cached.
"""

from __future__ import annotations

import codecs
import logging
import pickle
import struct
from pathlib import Path

import numpy as np

from ..core.errors import MtdError
from ..core.safe_files import open_regular

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("cache") / "data"  # where downloads go when no data_dir is given (every built-in image task)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = CIFAR_TRAIN + ("test_batch", "batches.meta")



def _find_cifar(data_dir: Path | None) -> Path | None:
    """The folder holding CIFAR-10's batches: ``<dir>/cifar-10-batches-py`` or ``<dir>`` itself."""
    root = data_dir or DEFAULT_DATA
    for folder in (root / CIFAR_FOLDER, root):
        if (folder / "batches.meta").is_file():
            missing = [n for n in CIFAR_FILES if not (folder / n).is_file()]
            if missing:
                raise MtdError(f"CIFAR-10 folder {folder} is incomplete: {', '.join(missing)} missing")
            return folder
    return None


def load_cifar10(train: bool, data_dir: Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from ``data_dir`` (default ``cache/data``), its archive downloaded there by torchvision's downloader
    if allowed (md5-checked; the batches are read here, never by torchvision's unrestricted unpickler)."""
    folder = _find_cifar(data_dir)
    root = data_dir or DEFAULT_DATA
    if folder is None and download:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as exc:  # no network, a refused or corrupt download: say where the files go
            log.warning("CIFAR-10 download into %s failed: %s", root, exc)
        folder = _find_cifar(data_dir)
    if folder is None:
        raise MtdError(f"CIFAR-10 not found in {root}: extract {CIFAR_URL} there (a {CIFAR_FOLDER} folder), "
                       f"or pass --data-dir pointing at it")
    return _read_cifar_folder(folder, train)


def _read_cifar_folder(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The batches of ``folder`` as (N, 3, 32, 32) uint8 images and labels, as torchvision's ``CIFAR10`` reads them
    (its (N, H, W, C) transposed back), through ``_CifarUnpickler``."""
    images, labels = [], []
    for name in CIFAR_TRAIN if train else ("test_batch",):
        try:
            with open_regular(folder / name) as f:
                batch = _CifarUnpickler(f, encoding="latin1").load()
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"] if "labels" in batch else batch["fine_labels"])
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError,
                IndexError) as exc:
            raise MtdError(f"CIFAR-10 files in {folder} are unreadable: {name}: {' '.join(str(exc).split())[:120]}"
                           ) from None
    return np.concatenate(images), np.asarray(labels)


class _CifarUnpickler(pickle.Unpickler):
    """Python's unpickler limited to what a CIFAR batch holds (dicts, lists, strings, numbers, numpy arrays):
    any other global a pickle names (``os.system``...) is refused, as ``torch.load(weights_only=True)`` does."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 writes bytes (a latin-1 str re-encoded)
            return codecs.encode
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never holds (refused)")


def _multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


class _Py2Str(bytes):
    """A Python 2 ``str``, the type of every string in the real CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table accepts new types
    """Protocol-2 pickles whose ``_Py2Str`` are written as Python 2 strings (BINSTRING opcodes).

    Such strings load as ``bytes`` with ``encoding="bytes"`` and as ``str``
    with ``encoding="latin1"`` (torchvision's choice), exactly as the real
    CIFAR files do; a Python 3 ``str`` or ``bytes`` would load as one type only.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: _Py2Str) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _dump_py2(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_fake_cifar10(root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """A small ``<root>/cifar-10-batches-py`` in the real format, for tests (CIFAR-10 cannot be had offline).

    Python-2 pickles with the real keys: each batch a dict of ``batch_label``,
    ``labels`` (list of int), ``data`` ((n, 3072) uint8, rows are R, G, B
    planes of 32x32) and ``filenames``; ``batches.meta`` holds ``label_names``.
    The training images are split over data_batch_1..5 in order. Seeded.
    """
    folder = Path(root) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [len(s) for s in np.array_split(np.arange(n_train), len(CIFAR_TRAIN))]
    for name, n in list(zip(CIFAR_TRAIN, sizes, strict=True)) + [("test_batch", n_test)]:
        _dump_py2({_Py2Str(b"batch_label"): _Py2Str(f"fake {name}".encode()),
                   _Py2Str(b"labels"): [int(x) for x in rng.integers(0, 10, n)],
                   _Py2Str(b"data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   _Py2Str(b"filenames"): [_Py2Str(f"{name}_{i}.png".encode()) for i in range(n)]}, folder / name)
    names = [_Py2Str(n.encode()) for n in CIFAR10_LABELS]
    _dump_py2({_Py2Str(b"label_names"): names, _Py2Str(b"num_cases_per_batch"): 10000,
               _Py2Str(b"num_vis"): 3072}, folder / "batches.meta")
    return folder
