"""Every registered model family (``models.families``), generated from the registry: one small model of each
builds for a task of its modality, takes a training step, and comes back from its saved weights unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mtd_cache.models import factory
from mtd_cache.models.families import FAMILIES, known
from mtd_cache.students.recipes import known_students, recipe_name

TASKS = {"image": SimpleNamespace(kind="image", channels=3, num_classes=4, size=32, label_names=list("abcd")),
         "text": SimpleNamespace(kind="text", num_labels=2, label_names=["no", "yes"]),
         "lm": SimpleNamespace(kind="lm", num_labels=0, label_names=())}


def _batch(kind: str) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "image":
        return {"x": torch.randn(4, 3, 32, 32)}, torch.tensor([0, 1, 2, 3])
    if kind == "lm":  # next-token prediction: the labels are the ids one step on
        ids = torch.randint(1, 30, (4, 7))
        return {"input_ids": ids}, ids[:, 1:].reshape(-1)
    return {"input_ids": torch.randint(1, 30, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long)}, \
        torch.tensor([0, 1, 1, 0])


def _logits(net: torch.nn.Module, inputs: dict) -> torch.Tensor:
    out = net(inputs["x"]) if "x" in inputs else net(**inputs)
    out = out if isinstance(out, torch.Tensor) else out.logits
    return out[:, :-1].reshape(-1, out.shape[-1]) if out.dim() == 3 else out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_model_of_every_family_builds_steps_and_round_trips(name, tmp_path):
    fam = FAMILIES[name]
    model_name = fam.example(tmp_path / "example")
    task = TASKS[fam.kind]
    net = factory.build(model_name, task)
    assert factory.family_of(model_name, fam.kind)[0] is fam and recipe_name(model_name) == fam.recipe
    inputs, labels = _batch(fam.kind)
    before = [p.detach().clone() for p in net.parameters()]
    net.train()
    loss = torch.nn.functional.cross_entropy(_logits(net, inputs), labels)
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    folder = tmp_path / "trained"
    folder.mkdir()
    fam.save(net, folder)
    info = {"model": model_name, "in_channels": 3, "num_classes": 4, "image_size": 32}
    back = factory.load_trained(folder, info, 2 if fam.kind == "text" else 4)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(_logits(back, inputs), _logits(net, inputs), rtol=0, atol=0)


def test_help_and_errors_list_every_family_from_the_registry():
    for fam in FAMILIES.values():
        assert fam.help in known() and fam.help in known_students()
    assert known("text") == FAMILIES["hf"].help and "tv:NAME" not in known("text")
    with pytest.raises(Exception, match=r"unknown student 'resnet18' \(the torchvision model is tv:resnet18\); "
                                        r"known: distilbert and tinybert \(the paper's recipes\), the CIFAR ResNets"):
        recipe_name("resnet18")
