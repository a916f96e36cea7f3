"""Every import points down the layers, in the order a request flows (README, Code map).

A module may import its own package and the packages below it, never one above: ``core`` imports
no app, ``queueing`` may use ``chat``'s caches but ``chat`` never the queue, and so on. Function-level
imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "stats", "chat", "queueing", "gateway", "ops", "chatbot_site")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file that names one of our packages."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.extend((node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in LAYERS)
    return found


def upward_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for layer, package in enumerate(LAYERS):
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imports_of(path):
                if LAYERS.index(target) > layer:
                    problems.append(f"{path.relative_to(root)}:{line} imports {target} (above {package})")
    return problems


def test_no_package_imports_one_above_it():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The test above can fail: a core module importing the gateway is reported."""
    for package in LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "core" / "bad.py").write_text("def f():\n    from gateway.http import api_view\n")
    (tmp_path / "gateway" / "fine.py").write_text("from core.errors import ApiError\n")
    assert upward_imports(tmp_path) == ["core/bad.py:2 imports gateway (above core)"]
