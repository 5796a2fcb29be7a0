#!/usr/bin/env python
"""Write the docs' generated tables from the code that defines them (so they cannot drift).

    python bin/docs_tables.py          # rewrite every generated part of docs/
    python bin/docs_tables.py --check  # exit 1, naming the file, when one is out of date (the tests run this)

A generated part sits between ``<!-- generated: NAME (bin/docs_tables.py writes this part) -->`` and
``<!-- end: NAME -->``: the settings of every recipe, teacher and dump (docs/settings.md), the model
families, the built-in tasks and the loss terms (docs/guide.md), the modules by stage (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("image_kd", "text_kd", "distilbert", "tinybert", "lm_kd")


def _begin(name: str) -> str:
    return f"<!-- generated: {name} (bin/docs_tables.py writes this part) -->"


def _end(name: str) -> str:
    return f"<!-- end: {name} -->"


def _students_of(recipe: str) -> str:
    from mtd_cache.models.families import FAMILIES
    from mtd_cache.students.recipes import NAMED

    names = [f"`{n}`" for n, (r, _) in NAMED.items() if r == recipe]
    names += [f.help for f in FAMILIES.values() if f.recipe == recipe]
    return "; ".join(names)


def settings() -> str:
    from mtd_cache.core.settings import settings_table
    from mtd_cache.teachers.lm import LmTeacherSettings
    from mtd_cache.teachers.lm_dump import LmDumpSettings
    from mtd_cache.teachers.text import TextDumpSettings, TextTeacherSettings
    from mtd_cache.teachers.vision import ImageDumpSettings, ImageTeacherSettings

    out = []
    for name in RECIPES:
        recipe = importlib.import_module(f"mtd_cache.students.recipes.{name}")
        out += [f"### Recipe `{name}`: {_students_of(name)}", "", settings_table(recipe.Settings)]
    for title, cls in (("Text teachers (`mtd-cache teachers`, `--set`)", TextTeacherSettings),
                       ("Image teachers (`mtd-cache teachers`, `--set`)", ImageTeacherSettings),
                       ("Text dump (`mtd-cache dump`, `--set`)", TextDumpSettings),
                       ("Image dump (`mtd-cache dump`, `--set`)", ImageDumpSettings),
                       ("Language-model teachers (`mtd-cache teachers`, `--set`)", LmTeacherSettings),
                       ("Language-model dump: the token store (`mtd-cache dump`, `--set`)", LmDumpSettings)):
        out += [f"### {title}", "", settings_table(cls)]
    return "\n".join(out)


def families() -> str:
    from mtd_cache.models.families import FAMILIES
    from mtd_cache.students.recipes import NAMED

    rows = ["| names | modality | as | student recipe |", "|---|---|---|---|"]
    rows += [f"| {f.help} | {f.kind} | teacher, student | `{f.recipe}` |" for f in FAMILIES.values()]
    rows += [f"| `{n}` (the paper's) | {kind} | student | `{r}` |" for n, (r, kind) in NAMED.items()]
    return "\n".join(rows) + "\n"


def tasks() -> str:
    from mtd_cache.tasks.glue import GLUE_TASKS
    from mtd_cache.tasks.images import IMAGE_TASKS

    rows = ["| task | metric | labels | train / dev | TinyBERT: augmentation rounds, stage-1 epochs |",
            "|---|---|---|---|---|"]
    for t in GLUE_TASKS.values():
        aliases = "".join(f", `{a}`" for a in t.aliases)
        rows.append(f"| `{t.name}`{aliases} | {t.metric} | {', '.join(t.label_names)} | "
                    f"{t.sizes[0]:,} / {t.sizes[1]:,} | {t.augment_rounds}, {t.ild_epochs} |")
    rows += ["", "| task | images | classes | train / test | views (pad, flip) |", "|---|---|---|---|---|"]
    for t in IMAGE_TASKS.values():
        sizes = f"{t.sizes[0]:,} / {t.sizes[1]:,}" if t.sizes else "the folders'"
        rows.append(f"| `{t.name}` | {t.channels} x {t.size} x {t.size} | {t.num_classes} | {sizes} | "
                    f"{t.num_views} ({t.pad}, {'flip' if t.flip else 'no flip'}) |")
    return "\n".join(rows) + "\n"


def terms() -> str:
    from mtd_cache.students import objective

    recipes = {name: importlib.import_module(f"mtd_cache.students.recipes.{name}").Settings for name in RECIPES}
    rows = ["| term | weight | reads | what | default weight per recipe |", "|---|---|---|---|---|"]
    for t in objective.TERMS.values():
        doc = " ".join((t.fn.__doc__ or "").split())
        where = ", ".join(f"`{name}` {cls.defaults()[t.weight]:g}" for name, cls in recipes.items()
                          if t.weight in cls.keys())
        reads = ", ".join(sorted(t.reads)) + ("" if t.teacher else " (no teacher)")
        rows.append(f"| `{t.name}` | `{t.weight}` | {reads} | {doc} | {where} |")
    return "\n".join(rows) + "\n"


def layout() -> str:
    import mtd_cache

    pkg = ROOT / "mtd_cache"
    rows = ["| stage | module | what |", "|---|---|---|"]
    top = sorted(p for p in pkg.glob("*.py"))
    rows += [f"| (the package) | `{p.name}` | {_summary(p)} |" for p in top]
    for stage in mtd_cache.STAGES:
        folder = pkg / stage
        rows.append(f"| **{stage}** | `{stage}/` | {_summary(folder / '__init__.py')} |")
        for p in sorted(folder.rglob("*.py")):
            if p.name != "__init__.py" or p.parent != folder:
                rows.append(f"| | `{p.relative_to(folder).as_posix()}` | {_summary(p)} |")
    return "\n".join(rows) + "\n"


def _summary(path: Path) -> str:
    """A module's docstring up to its first blank line, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")


PARTS: dict[str, tuple[str, Callable[[], str]]] = {
    "settings": ("docs/settings.md", settings),
    "families": ("docs/guide.md", families),
    "tasks": ("docs/guide.md", tasks),
    "terms": ("docs/guide.md", terms),
    "layout": ("docs/architecture.md", layout),
}


def render(text: str, name: str, make: Callable[[], str], where: Path) -> str:
    begin, end = _begin(name), _end(name)
    if begin not in text or end not in text:
        raise SystemExit(f"docs_tables: {where} has no {begin} ... {end} part")
    return text[:text.index(begin)] + begin + "\n\n" + make() + end + text[text.index(end) + len(end):]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    files: dict[Path, str] = {}
    for name, (rel, make) in PARTS.items():
        path = ROOT / rel
        files[path] = render(files.get(path, path.read_text(encoding="utf-8")), name, make, path)
    stale = [p for p, text in files.items() if text != p.read_text(encoding="utf-8")]
    if args.check:
        for p in stale:
            print(f"docs_tables: {p.relative_to(ROOT)} is out of date: run python bin/docs_tables.py", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(files[p], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
