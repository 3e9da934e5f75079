"""The package's floors, read from its imports (ast): a module imports only from its own floor
or below, the three pipelines (modeling, data, evaluation) do not import each other, and no
detres import hides inside a function (a cycle means a helper sits on the wrong floor)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "detres"

#: floor of each top-level part of the package, bottom first
FLOORS: dict[str, int] = {
    "utils": 0,
    "config": 1, "registry": 1, "preprocess": 1, "__init__": 1,
    "formats": 1,  # annotation file formats read by both data/ and evaluation/
    "modeling": 2, "data": 2, "evaluation": 2,
    "engine": 3, "export": 3,
    "benchmark": 4,
    "cli": 5, "__main__": 5,  # the command line (tools/*.py call it too)
}
PIPELINES = {"modeling", "data", "evaluation"}  # side by side: none imports another


def part_of(module: str) -> str:
    """``detres.modeling.rpn`` -> ``modeling``; ``detres`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def detres_imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported detres module, line, at module level) for every import of detres."""
    top = {id(node) for node in tree.body}
    for node in tree.body:  # imports under a module-level `if TYPE_CHECKING:` / try count too
        if isinstance(node, ast.If | ast.Try):
            top.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        for name in names:
            if name == "detres" or name.startswith("detres."):
                out.append((name, node.lineno, id(node) in top))
    return out


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_floor() -> None:
    parts = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0]
             for p in package_modules()}
    assert parts <= set(FLOORS), f"give these parts a floor: {sorted(parts - set(FLOORS))}"


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_floors(path: Path) -> None:
    module = module_name(path)
    mine = part_of(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for name, line, at_top in detres_imports(tree, module, path.name == "__init__.py"):
        theirs = part_of(name)
        where = f"{path.relative_to(REPO)}:{line} imports {name}"
        if not at_top:
            problems.append(f"{where} inside a function or class (move the helper down)")
        if FLOORS[theirs] > FLOORS[mine]:
            problems.append(f"{where}: floor {FLOORS[theirs]} ({theirs}) above {FLOORS[mine]} "
                            f"({mine})")
        elif mine in PIPELINES and theirs in PIPELINES and theirs != mine:
            problems.append(f"{where}: the {mine} and {theirs} pipelines are side by side")
    assert not problems, "\n".join(problems)


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: an upward import and a hidden one are both reported."""
    src = ("from detres.engine.trainer import Trainer\n"
           "def f():\n    from detres.data import catalog\n")
    found = detres_imports(ast.parse(src), "detres.modeling.x", False)
    assert found == [("detres.engine.trainer", 1, True), ("detres.data", 3, False)]


def test_tools_use_the_installed_package() -> None:
    hacks = [p.name for p in (REPO / "tools").rglob("*.py") if "sys.path" in p.read_text()]
    assert not hacks, f"tools editing sys.path: {hacks}"


def test_test_files_do_not_import_each_other() -> None:
    """Shared fixtures live in conftest.py."""
    bad = []
    for p in (REPO / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("test_"):
                bad.append(f"{p.name} imports {node.module}")
    assert not bad, bad
