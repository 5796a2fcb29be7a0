"""One model factory: every architecture by its name, for teachers, dumps and students.

Names (docs/guide.md, "Your own models"):

* the CIFAR ResNets by short name (``resnet8`` ... ``resnet1202``, He et al. 2016);
* ``hf:NAME_OR_PATH``: any Hugging Face sequence-classification checkpoint (a Hub name or a folder). On a
  text task a bare name is one too (``bert-base-uncased``, a folder: what ``--model`` always took);
* ``tv:NAME[@WEIGHTS]``: any torchvision classification model (``torchvision.models.list_models``), freshly
  initialised, or from its ``WEIGHTS`` (``DEFAULT``, ``IMAGENET1K_V1``...: downloaded once into
  ``$TORCH_HOME``, refused in one line offline) with the classifier resized to the task's classes.

``build`` makes a model to train; ``load_trained`` rebuilds a finished teacher from its folder and the record
``teachers`` wrote beside it. Both dispatch on the name's family (``families.FAMILIES``: what a name is, how
its models are built, saved and loaded). Every failure to make a model is one ``MtdError`` line naming the
model and the families that are known.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from ..core.errors import MtdError
from .families import FAMILIES, Family, known
from .names import RESNETS, ModelName
from .torchvision_models import build_torchvision, check_torchvision, torchvision_models

__all__ = ["FAMILIES", "Family", "ModelName", "build", "build_torchvision", "check_torchvision", "family", "family_of",
           "hf_ref", "known",
           "load_trained", "local_sha256", "parse", "resnet_depth", "slug", "torchvision_models"]

HF, TV = "hf:", "tv:"


def family_of(name: str, kind: str | None = None) -> tuple[Family, ModelName]:
    """``name``'s family and its parsed form; ``kind`` ("text" | "image"), when known, refuses names of the other
    modality. A bare name that no family claims is a Hugging Face checkpoint on a text task and unknown on an
    image task (naming the torchvision model of that name, if there is one)."""
    name = str(name)
    claimed = [(fam, parsed) for fam in FAMILIES.values() if (parsed := fam.claims(name, kind)) is not None]
    if claimed:
        fam, parsed = claimed[0]
    elif kind != "image":  # a bare name no family claims, on a text task: a Hugging Face checkpoint (--model's)
        fam, parsed = FAMILIES["hf"], ModelName(name, "hf", name)
    else:
        hint = f" (the torchvision model is tv:{name})" if name in torchvision_models() else ""
        raise MtdError(f"unknown image model {name!r}{hint}; known: {known(kind)}")
    if not parsed.ref:
        raise MtdError(f"model {name!r}: nothing after the prefix; known: {known()}")
    if kind is not None and fam.kind != kind:
        raise MtdError(f"{name} is {'an image' if fam.kind == 'image' else 'a text'} model; this is "
                       f"{'an image' if kind == 'image' else 'a text'} task (its models: {known(kind)})")
    return fam, parsed


def parse(name: str, kind: str | None = None) -> ModelName:
    """``name`` parsed (``family_of``)."""
    return family_of(name, kind)[1]


def family(name: str) -> str:
    """The name of ``name``'s family ("resnet", "hf", "tv", ...)."""
    return parse(name).family


def hf_ref(name: str) -> str:
    """What ``from_pretrained`` takes for a text model name: ``hf:`` stripped."""
    return parse(name, "text").ref


def resnet_depth(name: str) -> int | None:
    """The depth 6n+2 of a CIFAR ResNet name, None for any other model."""
    return RESNETS.get(name)


def local_sha256(name: str) -> str | None:
    """sha256 over the config and weight files of an ``hf:`` checkpoint in a local folder; None for Hub names and
    every other name. Cached per process by the files' sizes and modification times."""
    if not name.startswith(HF):
        return None
    folder = Path(parse(name).ref)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and (p.suffix in (".safetensors", ".bin", ".pt") or p.name == "config.json"))
    key = (str(folder.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _HASHED:
        from ..core.hashing import sha256_file

        whole = hashlib.sha256()
        for p in files:
            whole.update(f"{p.name}\0{sha256_file(p)}\n".encode())
        _HASHED[key] = whole.hexdigest()
    return _HASHED[key]


_HASHED: dict[tuple, str] = {}


def build(name: str, task: Any, hint: str = "give a local folder") -> torch.nn.Module:
    """A model called ``name`` for ``task``, ready to train: sized to its channels (images) and classes (a Hugging
    Face checkpoint's head initialised when it has none, or one of another size; ``hint``: what to set instead
    when a Hub name cannot be reached)."""
    fam, parsed = family_of(name, task.kind)
    return fam.build(parsed, task, hint)


def load_trained(folder: Path, info: dict[str, Any], num_labels: int) -> torch.nn.Module:
    """A finished teacher from its folder (weights) and its record ``info``, on the CPU, in eval mode."""
    name = str(info.get("model") or "")
    fam, parsed = family_of(name) if name else (FAMILIES["hf"], ModelName(name, "hf", str(folder)))  # unnamed: HF
    return fam.load(parsed, Path(folder), info, num_labels).eval()


def slug(name: str) -> str:
    """``name`` as one safe path component (its runs' folder): unchanged when it is one already (``resnet20``,
    ``distilbert``), else the family, the last part of the name and a hash of the whole
    (``tv:resnet18@DEFAULT`` -> ``tv_resnet18@DEFAULT_1a2b3c4d``, ``hf:/models/mini-3l`` -> ``hf_mini-3l_...``)."""
    name = str(name)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", name):
        return name
    head, _, rest = name.partition(":") if name.startswith(("hf:", "tv:", "lm:")) else ("model", "", name)
    tail = re.sub(r"[^A-Za-z0-9._@-]+", "_", rest.rstrip("/").rsplit("/", 1)[-1]).strip("._")[-40:] or "model"
    return f"{head}_{tail}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
