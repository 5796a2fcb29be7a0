"""One model factory: every architecture by its name, for teachers, dumps and students.

Names (DESIGN.md "Models by name"): the CIFAR ResNets by short name (``resnet8`` ... ``resnet1202``,
``resnet_cifar``); on a text task, any other name is a Hugging Face sequence-classification checkpoint
(a Hub name or a folder, ``bert``). ``build`` makes a model to train; ``load_trained`` rebuilds a
finished teacher from its folder and the record ``teachers`` wrote beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import MtdError
from .resnet_cifar import RESNETS, build_resnet


def family(name: str) -> str:
    """"resnet" for a CIFAR ResNet's short name, else "hf" (a Hugging Face checkpoint)."""
    return "resnet" if name in RESNETS else "hf"


def resnet_depth(name: str) -> int | None:
    """The depth 6n+2 of a CIFAR ResNet name, None for any other model."""
    return RESNETS.get(name)


def build(name: str, task: Any) -> torch.nn.Module:
    """A model called ``name`` for ``task``, ready to train: sized to its channels (images) and classes.

    Image tasks take CIFAR ResNets (freshly initialised); text tasks a Hugging Face classifier, its
    head initialised when the checkpoint has none for the task's labels.
    """
    if task.kind == "image":
        return build_resnet(name, task.channels, task.num_classes)
    if family(name) == "resnet":
        raise MtdError(f"{name} is an image model; task {task.name} is a text task")
    from . import bert

    return bert.load_classifier(name, task.num_labels, task.label_names)


def load_trained(folder: Path, info: dict[str, Any], num_labels: int) -> torch.nn.Module:
    """A finished teacher from its folder (weights) and its record ``info``, on the CPU, in eval mode."""
    if family(str(info.get("model", ""))) == "resnet":
        from safetensors.torch import load_file

        net = build_resnet(info["model"], info["in_channels"], info["num_classes"])
        net.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
        return net.eval()
    from . import bert

    return bert.load_classifier(folder, num_labels).eval()
