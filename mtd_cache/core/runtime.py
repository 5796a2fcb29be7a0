"""Where and how a run executes: seeds, the device, the autocast precision, the allocator, and how a record names them.

Shared by teachers, dumps and students, so that all three seed, place and cast alike.
"""

from __future__ import annotations

import platform
import random
import socket
from datetime import datetime, timezone

import numpy as np
import torch

from .. import __version__
from .errors import MtdError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA); data order is seeded separately per epoch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator for one epoch's data order and augmentation draws.

    Derived from (seed, epoch, stream) alone, so a run resumed at an epoch
    boundary draws exactly what an uninterrupted one would, and the data order
    is independent of the initialisation seed's use elsewhere.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream + 7)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MtdError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtdError(f"device {name!r} asked for, but no CUDA device is available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None, the name recorded): "auto" is bf16 on a GPU that has it, else fp32."""
    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if use_bf16 else "fp32"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise MtdError(f"unknown precision {precision!r}; valid: auto, {', '.join(dtypes)}")
    return dtypes[precision], precision


def heap_allocations() -> None:
    """Keep large tensors on the heap, as a training loop's allocator state does (glibc; elsewhere nothing).

    glibc maps every allocation above its mmap threshold (128 KB at start) with mmap and unmaps it on
    free; a training loop's large frees raise that threshold, so its activations come from the heap.
    A process that only runs forwards (a dump, a throughput measurement) stays below it and maps,
    page-faults and unmaps every activation: measured on a ResNet-20 batch of 128 at 1 thread, 1.1-1.3 ms
    per example against 0.46-0.53 ms with the threshold raised. Raising it is what the loop reaches.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: allocations below 256 MB from the heap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep freed heap memory for the next batch
    except (OSError, AttributeError):
        pass


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads@{socket.gethostname()}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, str]:
    return {"package_version": __version__, "torch": torch.__version__, "python": platform.python_version()}
