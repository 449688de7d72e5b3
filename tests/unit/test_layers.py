"""The layers of router/ and the imports between them (README, Architecture): read from the source's
AST, so a forbidden import fails here before anyone reviews it.

Every import counts, including those under `if TYPE_CHECKING:` and inside functions: a circle that
only type checking closes is still a circle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "router"

# Package -> module prefixes it must not import. A prefix matches the module and its submodules.
_DRIVERS = ("asyncpg", "aiomysql", "psycopg", "socket", "ssl")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "router.core": (
        "router.console",
        "router.protocol",
        "router.net",
        "router.sql",
        "router.catalog",
        "router.admin",
        "router.rebalance",
        "router.ops",
        "router.app",
        "router.cli",
        "router.supervisor",
        "pglast",
        *_DRIVERS,
    ),
    "router.protocol": (
        "router.console",
        "asyncio",
        "uvloop",
        "selectors",
        "router.net",
        "router.core.pool",
        "router.core.lease",
        "router.catalog",
        "router.admin",
        "router.rebalance",
        "router.ops",
        "router.app",
        "router.cli",
        "router.supervisor",
        *_DRIVERS,
    ),
    "router.sql": (
        "router.console",
        "asyncio",
        "router.core",
        "router.net",
        "router.protocol",
        "router.catalog",
        "router.admin",
        "router.rebalance",
        "router.ops",
        "router.app",
        "router.cli",
        "router.supervisor",
        *_DRIVERS,
    ),
    "router.catalog": (
        "router.console",
        "router.net",
        "router.protocol",
        "router.admin",
        "router.rebalance",
        "router.ops",
        "router.app",
        "router.cli",
    ),
    "router.admin": (
        "router.console",
        "router.net",
        "router.ops",
        "router.rebalance",
        "router.app",
        "router.cli",
        "router.supervisor",
    ),
    # Admin-side like router.admin, one layer above it: moves work on shards and the catalog, never
    # through the serving side.
    "router.rebalance": (
        "router.protocol",
        "router.net",
        "router.sql",
        "router.app",
        "router.cli",
        "router.supervisor",
    ),
    "router.ops": (
        "router.console",
        "router.net",
        "router.admin",
        "router.rebalance",
        "router.app",
        "router.cli",
        "router.supervisor",
    ),
    "router.net": (
        "router.console",
        "router.app",
        "router.cli",
        "router.supervisor",
        "router.admin",
        "router.ops",
        "router.rebalance",
    ),
    # The admin console's commands: they read the running router through a Protocol and act
    # through the catalog and admin, like router.ops; the connection's loop is router.net.console.
    "router.console": (
        "router.net",
        "router.sql",
        "router.ops",
        "router.rebalance",
        "router.app",
        "router.cli",
        "router.supervisor",
    ),
    "router.errors": ("router.",),
    "router.config": ("router.net", "router.protocol", "router.core.pool", "router.app", "router.cli"),
}
# Only the commands and the composition root's users may import the composition root.
APP_IMPORTERS = ("router.cli", "router.supervisor", "router.demo", "router.testing")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from router.admin import rls` imports the module router.admin.rls.
            found.update(f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}"))
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("router."):
        return False
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in sorted(ROOT.rglob("*.py"))}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def forbidden_imports() -> set[tuple[str, str]]:
    found = set()
    for module, imports in _graph().items():
        for package, banned in FORBIDDEN.items():
            if not _matches(module, package):
                continue
            found.update((module, name) for name in imports for prefix in banned if _matches(name, prefix))
        if not any(_matches(module, allowed) for allowed in (*APP_IMPORTERS, "router.app")):
            found.update((module, name) for name in imports if _matches(name, "router.app"))
        if module != "router.cli":
            found.update((module, name) for name in imports if _matches(name, "router.cli"))
    return found


def import_circles() -> list[list[str]]:
    """The strongly connected groups of router modules (Tarjan), each of more than one module."""
    graph = {module: {n for n in imports if n in _graph_keys} for module, imports in _graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


_graph_keys = {_module_name(path) for path in ROOT.rglob("*.py")}


def test_no_layer_imports_what_it_must_not() -> None:
    found = sorted(forbidden_imports())
    assert found == [], "forbidden imports (module, imported):\n" + "\n".join(f"  {m} -> {n}" for m, n in found)


def test_no_import_circles() -> None:
    circles = import_circles()
    assert circles == [], "import circles:\n" + "\n".join("  " + " -> ".join(c) for c in circles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\n", {"asyncio"}),
        ("from router.core import pool\n", {"router.core", "router.core.pool"}),
        ("if TYPE_CHECKING:\n    from router.net.server import X\n", {"router.net.server"}),
        ("def f():\n    from router.app import Router\n", {"router.app"}),
    ],
)
def test_every_kind_of_import_is_seen(
    tmp_path: Path, source: str, expected: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checks above are only as good as this reading of imports.
    path = ROOT / "core" / "__init__.py"
    original = path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == path else original(*a, **k))
    assert _imports(path) == expected
