"""The layers point one way: core imports nothing above it, methods and tasks never import the app (`bench`);
and no module grows past the size a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ABOVE = {"core": {"bench", "methods", "tasks"}, "methods": {"bench"}, "tasks": {"bench"}}
MAX_LINES = 350


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports (at module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_lower_layers_do_not_import_upper_ones(layer):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & ABOVE[layer])
        for path in sorted((ROOT / layer).glob("*.py"))
        if imported_packages(path) & ABOVE[layer]
    }
    assert not offenders, offenders


def test_no_module_is_too_long():
    long = {
        str(p.relative_to(ROOT)): n
        for folder in ("core", "methods", "tasks", "bench", "scripts", "tests")
        for p in (ROOT / folder).glob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
