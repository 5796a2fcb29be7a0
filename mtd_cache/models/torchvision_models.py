"""Any torchvision classifier as a teacher or student (``tv:NAME[@WEIGHTS]``): built for the task's images, its
classifier resized when it comes pretrained, checked to run at the task's size."""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import MtdError
from .names import ModelName


class TorchvisionClassifier(nn.Module):
    """A torchvision classifier on the task's images: greyscale repeated to the three channels it takes, and its
    logits only (GoogLeNet and Inception return auxiliary outputs while training)."""

    def __init__(self, net: nn.Module, in_channels: int):
        super().__init__()
        self.net = net
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.net(x)
        return out if isinstance(out, torch.Tensor) else out[0]  # (logits, aux...) named tuples

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"


# what a builder sets for pretrained weights besides the class count (torchvision's googlenet, inception_v3):
# a finished teacher is rebuilt with them, without the download
_WEIGHTS_KWARGS = {"googlenet": {"transform_input": True, "aux_logits": False, "init_weights": False},
                   "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False}}


def build_torchvision(name: ModelName, channels: int, num_classes: int, size: int | None,
                      download: bool = True) -> TorchvisionClassifier:
    """``tv:NAME[@WEIGHTS]`` for ``channels`` (1 or 3) x ``size`` images and ``num_classes`` classes.

    Without weights the builder makes ``num_classes`` outputs itself. With weights the pretrained model is
    loaded and every classifier layer (a Linear or 1x1 Conv2d with one output per ImageNet category) is
    replaced by a fresh one of ``num_classes`` outputs. A forward pass on two blank images of the task's size
    checks that the model runs at that size (ViTs need 224 x 224, Inception 75 x 75). ``download=False``
    builds the same architecture without fetching the weights (a finished teacher, whose weights are its own).
    """
    import torchvision.models as tvm

    check_torchvision(name)
    if channels not in (1, 3):
        raise MtdError(f"{name.name} takes 1- or 3-channel images, not {channels}")
    with warnings.catch_warnings():  # GoogLeNet and Inception announce a future change of their default init
        warnings.simplefilter("ignore", FutureWarning)
        if name.weights is None:
            net = tvm.get_model(name.ref, weights=None, num_classes=num_classes)
        elif not download:
            categories = len(tvm.get_model_weights(name.ref)[name.weights].meta["categories"])
            net = tvm.get_model(name.ref, weights=None, num_classes=categories,
                                **_WEIGHTS_KWARGS.get(name.ref, {}))
            _resize_heads(net, name, categories, num_classes)
        else:
            net, categories = _pretrained(name, tvm)
            _resize_heads(net, name, categories, num_classes)
    model = TorchvisionClassifier(net, channels)
    if size is not None:
        _check_runs(model, name, channels, size)
    return model


def check_torchvision(name: ModelName) -> None:
    """Refuse an unknown torchvision model or weights name in one line, without building anything."""
    if name.ref not in torchvision_models():
        close = difflib.get_close_matches(name.ref, torchvision_models(), n=3)
        hint = f" (did you mean {', '.join('tv:' + c for c in close)}?)" if close else ""
        raise MtdError(f"unknown torchvision model {name.name!r}{hint}; tv: takes the {len(torchvision_models())} "
                       "classification models of torchvision.models.list_models()")
    if name.weights is not None:
        import torchvision.models as tvm

        enum = tvm.get_model_weights(name.ref)
        if name.weights not in enum.__members__:
            raise MtdError(f"{name.name}: unknown weights {name.weights!r}; {name.ref} has "
                           f"{', '.join(enum.__members__)}")


def _pretrained(name: ModelName, tvm: Any) -> tuple[nn.Module, int]:
    """The pretrained model and how many categories its weights classify."""
    weights = tvm.get_model_weights(name.ref)[name.weights]
    try:
        net = tvm.get_model(name.ref, weights=weights)
    except Exception as exc:  # offline, a refused or truncated download: one line
        where = torch.hub.get_dir() + "/checkpoints"
        raise MtdError(f"could not load the weights {name.weights} of {name.name} ({weights.url}): "
                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; offline, put the file "
                       f"in {where}") from None
    return net, len(weights.meta["categories"])


def _resize_heads(net: nn.Module, name: ModelName, categories: int, num_classes: int) -> None:
    heads = [(path, m) for path, m in net.named_modules()
             if (isinstance(m, nn.Linear) and m.out_features == categories)
             or (isinstance(m, nn.Conv2d) and m.out_channels == categories and m.kernel_size == (1, 1))]
    if not heads:
        raise MtdError(f"{name.name}: no classifier layer with {categories} outputs to resize to {num_classes} "
                       "classes")
    for path, m in heads:
        if isinstance(m, nn.Linear):
            new: nn.Module = nn.Linear(m.in_features, num_classes, bias=m.bias is not None)
        else:
            new = nn.Conv2d(m.in_channels, num_classes, 1, bias=m.bias is not None)
        parent, _, attr = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, new)


def _check_runs(model: nn.Module, name: ModelName, channels: int, size: int) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, channels, size, size))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MtdError(f"{name.name} does not run on {size} x {size} images: {first[:200]} (give the task a "
                       "larger image_size)") from None
    finally:
        model.train(was)


_TV: list[str] = []


def torchvision_models() -> list[str]:
    """torchvision's classification models (its detection, segmentation and video models are other modules)."""
    if not _TV:
        import torchvision.models as tvm

        _TV.extend(tvm.list_models(module=tvm))
    return _TV


