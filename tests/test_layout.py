"""The layout's rules, held: the import rule between stages, a stated role for every module, the docs' generated
tables current (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mtd_cache

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtd_cache"
FACE = {"mtd_cache", "mtd_cache.hf"}  # the package's public face: may import from any stage


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in ``path``, those inside functions included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mtd_cache"):
                found += [(node.lineno, target)] if node.module else \
                    [(node.lineno, f"{target}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mtd_cache")]
    return found


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in mtd_cache.STAGES else None


def test_every_package_is_a_stage_in_order():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(mtd_cache.STAGES) == packages


def test_a_module_imports_only_from_its_stage_and_the_stages_below():
    rank = {s: i for i, s in enumerate(mtd_cache.STAGES)}
    wrong = []
    for name, path in modules().items():
        mine = stage(name)
        if name in FACE:
            continue
        for line, target in imports(name, path):
            theirs = stage(target)
            if theirs is None:  # the package root: the version, the public names
                if target not in ("mtd_cache", "mtd_cache.__version__"):
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}, the package's face")
            elif mine is None or rank[theirs] > rank[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs}), a later stage")
    assert not wrong, "the import rule (docs/architecture.md) is broken:\n" + "\n".join(wrong)


def test_the_rule_catches_an_import_running_up(tmp_path):
    """The check itself: a store module importing from the students, lazily inside a function, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""A module."""\n\n\ndef f():\n    from ..students import run\n')
    got = imports("mtd_cache.store.bad", bad)
    assert got == [(5, "mtd_cache.students")] and stage(got[0][1]) == "students"


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_states_its_role(name):
    doc = ast.get_docstring(ast.parse(modules()[name].read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 4, f"{name} has no docstring saying what it is for"


def test_the_docs_generated_tables_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "bin" / "docs_tables.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_no_file_outside_the_repository_is_cited():
    """The contract lives in the repository: code and docs cite only its own files."""
    cited = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
                 *(ROOT / "bench").glob("*.py"), *(ROOT / "bin").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        cited += [f"{path.relative_to(ROOT)}: {word}" for word in ("DESIGN.md", "STORAGE.md", "CONVENTIONS.md")
                  if word in text]
    assert not cited, cited


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (lazy imports included, ``if TYPE_CHECKING`` ones too)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        graph[name] = set()
        for _, target in imports(name, path):
            while target and target not in mods:  # ``from pkg.mod import name``: the module is pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def test_no_module_imports_itself_through_others():
    """No circles, within a stage either: ``farm-studio look`` found one (families <-> torchvision_models) that the
    stage rule cannot see."""
    import graphlib

    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as e:
        pytest.fail("modules that import each other: " + " -> ".join(e.args[1]))
