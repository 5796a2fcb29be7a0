"""A model's name, parsed: its family, what it loads, its weights (``tv:resnet18@DEFAULT``); the names that need no
import of torch to be known (the CIFAR ResNets')."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelName:
    """A parsed model name: its ``family`` (a key of ``families.FAMILIES``), the ``ref`` it loads, torchvision's
    ``weights``."""

    name: str
    family: str
    ref: str
    weights: str | None = None


RESNETS: dict[str, int] = {f"resnet{d}": d for d in (8, 14, 20, 32, 44, 56, 110, 1202)}  # name -> depth 6n+2
