"""One model factory: every architecture by its name, for teachers, dumps and students.

Names (DESIGN.md "Models by name"):

* the CIFAR ResNets by short name (``resnet8`` ... ``resnet1202``, He et al. 2016);
* ``hf:NAME_OR_PATH``: any Hugging Face sequence-classification checkpoint (a Hub name or a folder). On a
  text task a bare name is one too (``bert-base-uncased``, a folder: what ``--model`` always took);
* ``tv:NAME[@WEIGHTS]``: any torchvision classification model (``torchvision.models.list_models``), freshly
  initialised, or from its ``WEIGHTS`` (``DEFAULT``, ``IMAGENET1K_V1``...: downloaded once into
  ``$TORCH_HOME``, refused in one line offline) with the classifier resized to the task's classes.

``build`` makes a model to train; ``load_trained`` rebuilds a finished teacher from its folder and the record
``teachers`` wrote beside it. Every failure to make a model is one ``MtdError`` line naming the model and the
families that are known.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.checkpoints import load_weights
from ..core.errors import MtdError
from .resnet_cifar import RESNETS, build_resnet

HF, TV, RESNET = "hf:", "tv:", "resnet"
KNOWN = (f"the CIFAR ResNets ({', '.join(RESNETS)}), hf:NAME_OR_PATH (a Hugging Face sequence classifier), "
         "tv:NAME[@WEIGHTS] (a torchvision classifier, e.g. tv:resnet18, tv:mobilenet_v3_small@DEFAULT)")


@dataclass(frozen=True)
class ModelName:
    """A parsed model name: ``family`` "resnet" | "hf" | "tv", the ``ref`` it loads, torchvision ``weights``."""

    name: str
    family: str
    ref: str
    weights: str | None = None


def parse(name: str, kind: str | None = None) -> ModelName:
    """``name`` parsed; ``kind`` ("text" | "image"), when known, refuses names of the other modality.

    A bare name that is not a CIFAR ResNet is a Hugging Face checkpoint on a text task and unknown on an image
    task (naming the torchvision model of that name, if there is one).
    """
    name = str(name)
    if name in RESNETS:
        parsed = ModelName(name, RESNET, name)
    elif name.startswith(TV):
        ref, _, weights = name[len(TV):].partition("@")
        parsed = ModelName(name, "tv", ref, weights or None)
    elif name.startswith(HF):
        parsed = ModelName(name, "hf", name[len(HF):])
    elif kind == "image":
        hint = f" (the torchvision model is tv:{name})" if name in torchvision_models() else ""
        raise MtdError(f"unknown image model {name!r}{hint}; known: {KNOWN}")
    else:
        parsed = ModelName(name, "hf", name)
    if not parsed.ref:
        raise MtdError(f"model {name!r}: nothing after the prefix; known: {KNOWN}")
    if kind == "image" and parsed.family == "hf":
        raise MtdError(f"{name} is a Hugging Face text model; this is an image task (known image models: the CIFAR "
                       f"ResNets, tv:NAME[@WEIGHTS])")
    if kind == "text" and parsed.family != "hf":
        raise MtdError(f"{name} is an image model; this is a text task (text models: hf:NAME_OR_PATH)")
    return parsed


def family(name: str) -> str:
    """"resnet" for a CIFAR ResNet's short name, "tv" for a torchvision model, else "hf"."""
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
    """A model called ``name`` for ``task``, ready to train: sized to its channels (images) and classes.

    Image tasks take CIFAR ResNets (freshly initialised) and torchvision models; text tasks a Hugging Face
    classifier, its head initialised when the checkpoint has none, or one of another size, for the task's labels
    (``hint``: what to set instead when a Hub name cannot be reached).
    """
    parsed = parse(name, task.kind)
    if parsed.family == RESNET:
        return build_resnet(name, task.channels, task.num_classes)
    if parsed.family == "tv":
        return build_torchvision(parsed, task.channels, task.num_classes, task.size)
    from . import bert

    return bert.load_classifier(parsed.ref, task.num_labels, task.label_names, hint=hint,
                                ignore_mismatched_sizes=True)


def load_trained(folder: Path, info: dict[str, Any], num_labels: int) -> torch.nn.Module:
    """A finished teacher from its folder (weights) and its record ``info``, on the CPU, in eval mode."""
    name = str(info.get("model") or "")
    parsed = parse(name) if name else ModelName(name, "hf", str(folder))  # unnamed: a Hugging Face folder
    if parsed.family == "hf":
        from . import bert

        return bert.load_classifier(folder, num_labels, use_safetensors=True).eval()  # never a pickled .bin
    if parsed.family == RESNET:
        net = build_resnet(parsed.name, info["in_channels"], info["num_classes"])
    else:
        net = build_torchvision(parsed, info["in_channels"], info["num_classes"], info.get("image_size"),
                                download=False)  # every weight comes from model.safetensors
    load_weights(net, Path(folder) / "model.safetensors")
    return net.eval()


# ----------------------------------------------------------------------------- torchvision


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
        raise MtdError(f"unknown torchvision model {name.name!r}{hint}; known: {KNOWN}")
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


def slug(name: str) -> str:
    """``name`` as one safe path component (its runs' folder): unchanged when it is one already (``resnet20``,
    ``distilbert``), else the family, the last part of the name and a hash of the whole
    (``tv:resnet18@DEFAULT`` -> ``tv_resnet18@DEFAULT_1a2b3c4d``, ``hf:/models/mini-3l`` -> ``hf_mini-3l_...``)."""
    name = str(name)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", name):
        return name
    head, _, rest = name.partition(":") if name.startswith(("hf:", "tv:")) else ("model", "", name)
    tail = re.sub(r"[^A-Za-z0-9._@-]+", "_", rest.rstrip("/").rsplit("/", 1)[-1]).strip("._")[-40:] or "model"
    return f"{head}_{tail}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
