"""The public API: every name a user's own loop imports, with its signature, pinned.

``tests/data/public_api.txt`` lists each public name of ``mtd_cache``, ``mtd_cache.hf``, ``mtd_cache.store`` and
``mtd_cache.teachers`` with its signature (a class's constructor, public methods and properties). A change to
any of them fails here; when it is meant, keep the old path working (a re-export) and regenerate the file:
``.venv/bin/python -m tests.test_public_api > tests/data/public_api.txt``.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

PINNED = Path(__file__).with_name("data") / "public_api.txt"
MODULES = ("mtd_cache", "mtd_cache.hf", "mtd_cache.store", "mtd_cache.teachers")


def describe(obj: Any) -> list[str]:
    """A class's constructor and public members, a function's signature, or a constant's value."""
    if inspect.isclass(obj):
        lines = [f"class{inspect.signature(obj)}"]
        for name, member in sorted(vars(obj).items()):
            if name.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                lines.append(f" .{name} property")
            elif callable(member):
                lines.append(f" .{name}{inspect.signature(member)}")
        return lines
    if callable(obj):
        return [f"def{inspect.signature(obj)}"]
    return [f"= {obj!r}"]


def surface() -> list[str]:
    out = []
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in sorted(n for n in module.__all__ if n != "__version__"):
            first, *members = describe(getattr(module, name))
            out.append(f"{modname}.{name} {first}")
            out.extend(f"{modname}.{name} {m}" for m in members)
    return out


def test_the_public_names_and_signatures_are_the_pinned_ones():
    pinned, now = PINNED.read_text(encoding="utf-8").splitlines(), surface()
    gone, new = [p for p in pinned if p not in now], [n for n in now if n not in pinned]
    assert not gone and not new, ("the public API changed (keep old paths as re-exports; when meant, regenerate: "
                                  "`.venv/bin/python -m tests.test_public_api > tests/data/public_api.txt`):\n"
                                  + "\n".join([f"- {g}" for g in gone] + [f"+ {n}" for n in new]))


def test_moved_modules_keep_their_public_paths():
    """``mtd_cache.hf`` kept its path when the Trainer moved into the student stage."""
    from mtd_cache.hf import DistillationTrainer
    from mtd_cache.students.hf_trainer import DistillationTrainer as moved

    assert DistillationTrainer is moved


if __name__ == "__main__":
    print("\n".join(surface()))
