"""Student recipes, per method and modality: each supplies its settings, its model, its init and its loss terms.

The shared parts (the run and its record ``students.run``, the training loop ``train.fit``, the teacher
targets ``students.targets``, the data ``students.data``) live outside. A recipe module defines:

* ``MODALITY`` — "text", "image" or "lm": the stores it trains on (a token store for "lm");
* ``Settings`` — a frozen ``settings.Settings`` dataclass: every hyper-parameter it reads, with its default,
  type, range and source (the requested values go into the run record and the run id);
* ``NEEDS_PRIMARY: bool`` — whether ``--primary`` is required (BERT students) or an error (images); or
  ``needs_primary(settings) -> bool`` where the settings decide (text KD: only with a hidden-state loss);
* ``build(ctx: StudentContext) -> train.Fit`` — model, optimizer, scheduler, batches, step (returning
  ``loss`` and its terms) and ``evaluate`` (returning ``{"metric": float, ...}`` on the dev/test split);
* ``build_pack(ctxs: list[StudentContext]) -> fit_pack.PackFit`` (optional: the image recipe) — S runs of one
  seed and settings, differing in their teachers, as one stacked model (``students.pack``); without it the
  recipe's students train one per process;
* ``RUN_KINDS`` (optional) — other run kinds it needs, by name (TinyBERT: ``{"stage1": tinybert_stage1.KIND}``),
  each run and reused by the same machinery as a student run.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ...core.errors import MtdError
from ...models import families

# the paper's students by name: their recipes build their own models (name -> recipe module, modality). Every other
# student is a model of a family (``models.families``: the CIFAR ResNets, hf:, tv:), trained by its family's recipe.
NAMED = {"distilbert": ("distilbert", "text"), "tinybert": ("tinybert", "text")}


def known_students(kind: str | None = None) -> str:
    """The students (of one modality), as help texts and errors list them: the paper's recipes, then the families."""
    named = [n for n, (_, k) in NAMED.items() if kind is None or k == kind]
    head = f"{' and '.join(named)} (the paper's recipes)" if named else ""
    return ", ".join(x for x in (head, families.known(kind)) if x)


# recipe -> (needs a primary teacher, two-stage with a shared stage 1): what a sweep plan needs to know;
# None: the settings decide (the recipe's ``needs_primary``)
TRAITS: dict[str, tuple[bool | None, bool]] = {"distilbert": (True, False), "tinybert": (True, True),
                                               "text_kd": (None, False)}


def recipe_name(student: str) -> str:
    """The recipe module that trains ``student``: its own (the paper's students) or its family's."""
    if student in NAMED:
        return NAMED[student][0]
    claimed = [(fam, parsed) for fam in families.FAMILIES.values() if (parsed := fam.claims(student, None))]
    if not claimed:
        from ...models.torchvision_models import torchvision_models

        hint = f" (the torchvision model is tv:{student})" if student in torchvision_models() else ""
        raise MtdError(f"unknown student {student!r}{hint}; known: {known_students()}")
    fam, parsed = claimed[0]
    if fam.name == "tv":
        from ...models.torchvision_models import check_torchvision

        check_torchvision(parsed)
    return fam.recipe


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
        a = {"image": "an image", "text": "a text", "lm": "a language-model"}
        raise MtdError(f"{student} is {a[recipe.MODALITY]} student; {where} holds {a[kind]} task (its students: "
                       f"{known_students(kind)})")
