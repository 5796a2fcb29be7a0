"""Model families: every kind of architecture the tool builds, one registered entry each.

A family says which model names are its own, how to build a model of such a name for a task (to train),
how to save a trained one into a folder and load it back (a teacher, a kept student), which student
recipe trains its models, and a phrase for help texts and errors. ``factory`` dispatches on it; the
commands' help, every error that lists the known models and the guide's table of families are generated
from it; ``tests/test_families.py`` builds one small model of each family, takes a training step and
round-trips its weights. Adding a family is one ``register_family`` call here (and its test is generated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.safe_files import atomic_path
from .names import RESNETS, ModelName

if TYPE_CHECKING:  # importing the registry (help texts, errors) must not import torch
    import torch.nn as nn


@dataclass(frozen=True)
class Family:
    """One family of models. ``claims(name, kind)`` gives the parsed name when ``name`` is this family's (``kind``:
    the task's modality, when known); ``build(parsed, task, hint)`` a model to train, sized to the task;
    ``save(model, folder)`` writes what ``load(parsed, folder, info, num_labels)`` rebuilds a finished model from
    (``info``: the teacher's record); ``example(folder)`` the name of a small model of the family (for tests)."""

    name: str
    kind: str  # "image" or "text": the tasks its models take
    claims: Callable[[str, str | None], ModelName | None]
    build: Callable[[ModelName, Any, str], nn.Module]
    save: Callable[[nn.Module, Path], None]
    load: Callable[[ModelName, Path, dict[str, Any], int], nn.Module]
    recipe: str  # the student recipe (``students.recipes``) that trains its models
    help: str
    example: Callable[[Path], str]


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered already")
    FAMILIES[family.name] = family
    return family


def known(kind: str | None = None) -> str:
    """The families (of one modality), as help texts and errors list them."""
    return ", ".join(f.help for f in FAMILIES.values() if kind is None or f.kind == kind)


def save_weights(model: nn.Module, folder: Path) -> None:
    """``model.safetensors``: the state dict, contiguous, on the CPU (what ``load_weights`` reads back)."""
    from safetensors.torch import save_file

    with atomic_path(Path(folder) / "model.safetensors") as tmp:
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))


# ----------------------------------------------------------------------------- the CIFAR ResNets


def _resnet_claims(name: str, kind: str | None) -> ModelName | None:
    return ModelName(name, "resnet", name) if name in RESNETS else None


def _resnet_build(parsed: ModelName, task: Any, hint: str) -> nn.Module:
    from .resnet_cifar import build_resnet

    return build_resnet(parsed.name, task.channels, task.num_classes)


def _resnet_load(parsed: ModelName, folder: Path, info: dict[str, Any], num_labels: int) -> nn.Module:
    from ..core.checkpoints import load_weights
    from .resnet_cifar import build_resnet

    net = build_resnet(parsed.name, info["in_channels"], info["num_classes"])
    load_weights(net, Path(folder) / "model.safetensors")
    return net


register_family(Family(
    name="resnet", kind="image", claims=_resnet_claims, build=_resnet_build,
    save=save_weights, load=_resnet_load, recipe="image_kd",
    help="the CIFAR ResNets (resnet8 ... resnet1202, He et al.)", example=lambda folder: "resnet8"))


# ----------------------------------------------------------------------------- Hugging Face classifiers


def _hf_claims(name: str, kind: str | None) -> ModelName | None:
    return ModelName(name, "hf", name[3:]) if name.startswith("hf:") else None


def _hf_build(parsed: ModelName, task: Any, hint: str) -> nn.Module:
    from . import bert

    return bert.load_classifier(parsed.ref, task.num_labels, task.label_names, hint=hint,
                                ignore_mismatched_sizes=True)


def _hf_load(parsed: ModelName, folder: Path, info: dict[str, Any], num_labels: int) -> nn.Module:
    from . import bert

    return bert.load_classifier(folder, num_labels, use_safetensors=True)  # never a pickled .bin


def _hf_example(folder: Path) -> str:
    """A one-layer BERT of 16 dimensions with a vocabulary of 30 ids, saved into ``folder``."""
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    return f"hf:{folder}"


register_family(Family(
    name="hf", kind="text", claims=_hf_claims, build=_hf_build,
    save=lambda model, folder: model.save_pretrained(folder), load=_hf_load, recipe="text_kd",
    help="hf:NAME_OR_PATH (any Hugging Face sequence classifier, a Hub name or a folder)", example=_hf_example))


# ----------------------------------------------------------------------------- torchvision classifiers


def _tv_claims(name: str, kind: str | None) -> ModelName | None:
    if not name.startswith("tv:"):
        return None
    ref, _, weights = name[3:].partition("@")
    return ModelName(name, "tv", ref, weights or None)


def _tv_build(parsed: ModelName, task: Any, hint: str) -> nn.Module:
    from .torchvision_models import build_torchvision

    return build_torchvision(parsed, task.channels, task.num_classes, task.size)


def _tv_load(parsed: ModelName, folder: Path, info: dict[str, Any], num_labels: int) -> nn.Module:
    from ..core.checkpoints import load_weights
    from .torchvision_models import build_torchvision

    net = build_torchvision(parsed, info["in_channels"], info["num_classes"], info.get("image_size"),
                            download=False)  # every weight comes from model.safetensors
    load_weights(net, Path(folder) / "model.safetensors")
    return net


register_family(Family(
    name="tv", kind="image", claims=_tv_claims, build=_tv_build, save=save_weights, load=_tv_load,
    recipe="image_kd", help="tv:NAME[@WEIGHTS] (any torchvision classifier, e.g. tv:resnet18, "
                            "tv:mobilenet_v3_small@DEFAULT)",
    example=lambda folder: "tv:mobilenet_v3_small"))


# ----------------------------------------------------------------------------- causal language models


def _lm_claims(name: str, kind: str | None) -> ModelName | None:
    return ModelName(name, "lm", name[3:]) if name.startswith("lm:") else None


def _lm_build(parsed: ModelName, task: Any, hint: str) -> nn.Module:
    from . import causal_lm

    return causal_lm.build(parsed.name, 0, hint)[0]


def _lm_load(parsed: ModelName, folder: Path, info: dict[str, Any], num_labels: int) -> nn.Module:
    from . import causal_lm

    return causal_lm.load(str(folder))


def _lm_example(folder: Path) -> str:
    """A one-layer GPT-2 of 16 dimensions over 30 ids: a config alone (a random initialisation)."""
    from transformers import GPT2Config

    GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2).save_pretrained(folder)
    return f"lm:{folder}"


register_family(Family(
    name="lm", kind="lm", claims=_lm_claims, build=_lm_build,
    save=lambda model, folder: model.save_pretrained(folder), load=_lm_load, recipe="lm_kd",
    help="lm:NAME_OR_PATH (a causal language model on a token store: a Hub name, a folder, a .gguf file, or a "
         "folder holding only a config.json)", example=_lm_example))
