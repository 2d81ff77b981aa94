"""The layering of app/ and worker/, read from the source with `ast`.

core < data < jobs < api, worker < tools: a module may import its own layer or a
lower one, never a higher one; api and worker are siblings and import neither
each other. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("app", "worker")
MAX_LINES = 400
# Modules allowed over MAX_LINES for now (paths relative to the repository root).
KNOWN_LONG: set[str] = set()

# Package prefix -> (rank, group). Same rank, different group: siblings that may not meet.
LAYERS = {
    "app.core": (0, "core"),
    "app.data": (1, "data"),
    "app.jobs": (2, "jobs"),
    "app.api": (3, "api"),
    "worker": (3, "worker"),
    "app.tools": (4, "tools"),
}


def layer_of(module: str) -> tuple[int, str] | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the tree, relative ones resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from app import jobs` imports app.jobs: judge each name as a submodule too.
            found += [(node.lineno, f"{base}.{alias.name}" if layer_of(base) is None else base) for alias in node.names]
    return found


def violations(source: str, path: str, module: str, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    if own is None:
        return []
    found = []
    for line, imported in imports_of(ast.parse(source, path), module, is_package):
        other = layer_of(imported)
        if other is None:
            continue
        if other[0] > own[0] or (other[0] == own[0] and other[1] != own[1]):
            found.append(f"{path}:{line}: {own[1]} module {module} imports {imported} ({other[1]} layer)")
    return found


def python_files() -> list[Path]:
    return sorted(p for top in CHECKED for p in (ROOT / top).rglob("*.py"))


def test_the_checker_sees_the_source_tree() -> None:
    names = {module_name(p) for p in python_files()}
    assert {"app.core.storage", "app.jobs.results", "worker.loop", "app.tools.cli"} <= names


def test_the_checker_catches_upward_sibling_and_nested_imports() -> None:
    source = "import app.core.storage\ndef f():\n    from app.api.main import create_app\n"
    assert violations(source, "x.py", "app.jobs.x") == [
        "x.py:3: jobs module app.jobs.x imports app.api.main (api layer)"
    ]
    assert violations("from app.api import deps\n", "w.py", "worker.w") != []
    assert violations("from worker import loop\n", "a.py", "app.api.a") != []
    assert violations("from app import tools\n", "d.py", "app.data.d") != []
    assert violations("from ..api import deps\n", "j.py", "app.jobs.j") != []
    assert violations("from app.jobs import lines\nimport worker.loop\n", "t.py", "app.tools.t") == []


def test_no_module_imports_from_a_higher_layer() -> None:
    found = []
    for path in python_files():
        relative = str(path.relative_to(ROOT))
        source = path.read_text(encoding="utf-8")
        found += violations(source, relative, module_name(path), path.name == "__init__.py")
    assert not found, "imports from a higher layer:\n" + "\n".join(found)


def test_no_module_is_longer_than_400_lines() -> None:
    too_long = []
    for path in python_files():
        relative = str(path.relative_to(ROOT))
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and relative not in KNOWN_LONG:
            too_long.append(f"{relative}: {lines} lines")
    assert not too_long, f"modules over {MAX_LINES} lines:\n" + "\n".join(too_long)


@pytest.mark.parametrize(
    ("module", "rank"),
    [("app.core", 0), ("app.data.queue", 1), ("app.api.admin.routes", 3), ("worker.engine", 3), ("app.tools.cli", 4)],
)
def test_each_module_gets_the_rank_of_its_package(module: str, rank: int) -> None:
    assert layer_of(module) is not None and layer_of(module)[0] == rank  # type: ignore[index]
    assert layer_of("tests.unit.x") is None and layer_of("application") is None
