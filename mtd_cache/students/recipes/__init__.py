"""Student recipes, per method and modality: each supplies its settings, its model, its init and its loss terms.

The shared parts (the run and its record ``students.run``, the training loop ``train.fit``, the teacher
targets ``students.targets``, the data ``students.data``) live outside. A recipe module defines:

* ``MODALITY`` — "text" or "image": the stores it trains on;
* ``Settings`` — a frozen ``settings.Settings`` dataclass: every hyper-parameter it reads, with its default,
  type, range and source (the requested values go into the run record and the run id);
* ``NEEDS_PRIMARY: bool`` — whether ``--primary`` is required (BERT students) or an error (images); or
  ``needs_primary(settings) -> bool`` where the settings decide (text KD: only with a hidden-state loss);
* ``build(ctx: StudentContext) -> train.Fit`` — model, optimizer, scheduler, batches, step (returning
  ``loss`` and its terms) and ``evaluate`` (returning ``{"metric": float, ...}`` on the dev/test split);
* ``RUN_KINDS`` (optional) — other run kinds it needs, by name (TinyBERT: ``{"stage1": tinybert_stage1.KIND}``),
  each run and reused by the same machinery as a student run.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ...core.errors import MtdError
from ...models import factory

# student name -> recipe module; any other hf:NAME_OR_PATH trains with text_kd, any tv:NAME[@WEIGHTS] with image_kd
STUDENTS = {
    "resnet8": "image_kd", "resnet14": "image_kd", "resnet20": "image_kd", "resnet32": "image_kd",
    "resnet44": "image_kd", "resnet56": "image_kd", "resnet110": "image_kd",
    "distilbert": "distilbert",
    "tinybert": "tinybert",
}

FAMILIES = {"hf": "text_kd", "tv": "image_kd", "resnet": "image_kd"}
STUDENTS_OF = {"image": "the CIFAR ResNets and tv:NAME[@WEIGHTS]",
               "text": "distilbert, tinybert and hf:NAME_OR_PATH"}
KNOWN = ("the CIFAR ResNets (resnet8 ... resnet1202), distilbert and tinybert (the paper's recipes), "
         "hf:NAME_OR_PATH (any Hugging Face classifier, text KD), tv:NAME[@WEIGHTS] (any torchvision classifier, "
         "image KD)")

# recipe -> (needs a primary teacher, two-stage with a shared stage 1): what a sweep plan needs to know;
# None: the settings decide (the recipe's ``needs_primary``)
TRAITS: dict[str, tuple[bool | None, bool]] = {"distilbert": (True, False), "tinybert": (True, True),
                                               "text_kd": (None, False)}


def recipe_name(student: str) -> str:
    """The recipe module that trains ``student``: its own (the paper's students) or its family's."""
    if student in STUDENTS:
        return STUDENTS[student]
    if factory.resnet_depth(student):
        return "image_kd"
    if student.startswith((factory.HF, factory.TV)):
        parsed = factory.parse(student)
        if parsed.family == "tv":
            factory.check_torchvision(parsed)
        return FAMILIES[parsed.family]
    hint = f" (the torchvision model is tv:{student})" if student in factory.torchvision_models() else ""
    raise MtdError(f"unknown student {student!r}{hint}; known: {KNOWN}")


def student_traits(student: str, overrides: dict[str, Any] | None = None) -> tuple[bool, bool]:
    """(needs_primary, two_stage) of a student under ``overrides``; imports a recipe only when its settings decide."""
    name = recipe_name(student)
    needs, two_stage = TRAITS.get(name, (False, False))
    if needs is None:
        recipe = get_recipe(student)
        needs = needs_primary(recipe, recipe.Settings.resolve(overrides or {}).settings)
    return needs, two_stage


def needs_primary(recipe: ModuleType, settings: Any) -> bool:
    rule = getattr(recipe, "needs_primary", None)
    return bool(rule(settings)) if rule is not None else bool(recipe.NEEDS_PRIMARY)


def get_recipe(student: str) -> ModuleType:
    return importlib.import_module(f".{recipe_name(student)}", __name__)


def check_modality(student: str, recipe: ModuleType, kind: str, where: str) -> None:
    """A text student on an image store (or the reverse) refused in one line, naming the students that fit."""
    if recipe.MODALITY != kind:
        a = {"image": "an image", "text": "a text"}
        raise MtdError(f"{student} is {a[recipe.MODALITY]} student; {where} holds {a[kind]} task (its students: "
                       f"{STUDENTS_OF[kind]})")
