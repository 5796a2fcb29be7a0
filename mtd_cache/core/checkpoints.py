"""Resume checkpoints as safetensors plus JSON: a state that holds no code.

``torch.save`` pickles, and unpickling runs whatever the file says: a planted ``<run_id>.ckpt.pt`` in a
shared runs folder would run its code when the same command resumes. A checkpoint here is one
safetensors file: every tensor of the state (the model's, the optimiser's and scheduler's, torch's CPU
and CUDA RNG states) under its path in the state, and everything else (epoch, history, hyper-parameters,
Python's and numpy's RNG states, the scaler's numbers) as JSON in the file's metadata. Loading parses a
JSON header and raw tensor bytes (safetensors' own parser): nothing in the file is ever executed.

The JSON encodes what ``json`` cannot say on its own with one-key tags: ``{"$tensor": name}``,
``{"$ndarray": name}`` (a numpy array, stored as a tensor), ``{"$tuple": [...]}``, ``{"$items": [[k, v],
...]}`` (a dict whose keys are not all strings, or one with a ``$`` key), ``{"$counter": [[k, v], ...]}``
(``MultiStepLR``'s milestones); non-finite floats are JSON's ``NaN``/``Infinity``. Anything else is refused
when saving (``TypeError``: a new engine's state type is added here, not pickled). A file that is not
a checkpoint this tool wrote is ``NotACheckpoint``.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MtdError, ResourceError, is_resource_fault
from .safe_files import atomic_path

FORMAT = "mtd-cache-checkpoint"
VERSION = "1"
_TAGS = ("$tensor", "$ndarray", "$tuple", "$items", "$counter")


class NotACheckpoint(MtdError):
    """A file at a checkpoint's path that this tool did not write (or that is damaged): exit status 2."""


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically as one safetensors file (a full disk: ``ResourceError``, the old file kept)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_encode(state, "", tensors, set()), allow_nan=True)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": VERSION, "state": meta})
        except Exception as exc:  # safetensors and the OS report a full disk in their own ways
            if is_resource_fault(exc):
                raise ResourceError(f"writing the checkpoint {path} failed: {' '.join(str(exc).split())[:200]}; "
                                    "the run resumes from its last checkpoint once there is space") from None
            raise


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The state saved at ``path`` by ``save_state``; ``NotACheckpoint`` naming why for anything else."""
    from safetensors import safe_open

    path = Path(path)
    try:
        kind = os.lstat(path).st_mode
    except OSError as exc:
        raise NotACheckpoint(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(kind):
        raise NotACheckpoint(f"{path} is not a regular file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
            state = _decode(json.loads(meta["state"]), f)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not ours": named, never executed
        raise NotACheckpoint(f"{path} is not a checkpoint mtd-cache wrote ({_why(exc)})") from None
    if not isinstance(state, dict):
        raise NotACheckpoint(f"{path} is not a checkpoint mtd-cache wrote (its state is not a mapping)")
    return state


def load_weights(model: torch.nn.Module, path: str | os.PathLike, device: str = "cpu") -> None:
    """A model's weights from a safetensors file (a teacher's, a stage 1's, a kept student's): a file that is not
    one, or does not fit the model, is ``NotACheckpoint``, one line (a full disk or an I/O error stays itself)."""
    from safetensors.torch import load_model

    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("not a regular file")
        load_model(model, str(path), strict=True, device=device)
    except Exception as exc:  # noqa: BLE001 - named in one line, never a traceback
        if is_resource_fault(exc):
            raise
        raise NotACheckpoint(f"{path}: not weights this model can load ({_why(exc)})") from None


def _why(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _encode(obj: Any, where: str, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj  # NaN and infinities too: json writes and reads them
    if isinstance(obj, torch.Tensor):
        return {"$tensor": _put(where, obj, tensors, storages)}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": _put(where, torch.from_numpy(np.ascontiguousarray(obj)), tensors, storages)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, f"{where}/{i}", tensors, storages) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{where}/{i}", tensors, storages) for i, v in enumerate(obj)]
    if isinstance(obj, Counter):
        return {"$counter": [[_encode(k, where, tensors, storages), v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, f"{where}/{k}", tensors, storages) for k, v in obj.items()}
        return {"$items": [[_encode(k, where, tensors, storages), _encode(v, f"{where}/{k}", tensors, storages)]
                           for k, v in obj.items()]}
    raise TypeError(f"checkpoint state at {where or '/'}: {type(obj).__name__} has no safe encoding (add one to "
                    "mtd_cache/checkpoints.py rather than pickle it)")


def _put(where: str, t: torch.Tensor, tensors: dict[str, torch.Tensor], storages: set[int]) -> str:
    """Store a tensor under its path; one that shares memory with a stored one is copied (safetensors refuses
    shared storage), every one made contiguous and moved to the CPU."""
    t = t.detach()
    key = t.untyped_storage().data_ptr() if t.device.type == "cpu" and t.numel() else None
    t = t.to("cpu").contiguous()
    if key is not None and key in storages:
        t = t.clone()
    elif key is not None:
        storages.add(key)
    name = where or "/"
    while name in tensors:
        name += "'"
    tensors[name] = t
    return name


def _decode(obj: Any, f: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v, f) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)) in _TAGS:
        tag, value = next(iter(obj.items()))
        if tag == "$tensor":
            return f.get_tensor(str(value))
        if tag == "$ndarray":
            return f.get_tensor(str(value)).numpy()
        if tag == "$tuple":
            return tuple(_decode(v, f) for v in value)
        if tag == "$counter":
            return Counter({_decode(k, f): v for k, v in value})
        return {_decode(k, f): _decode(v, f) for k, v in value}
    return {k: _decode(v, f) for k, v in obj.items()}
