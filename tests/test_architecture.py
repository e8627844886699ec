"""The layering the folders promise, checked from the source (no imports executed).

- `service.imaging` (pixels) and `service.inference` (sessions, decision, batching) never import the HTTP
  layer: not `service.api`, not fastapi or starlette; `service.imaging` not onnxruntime either.
- Inside `service`, fastapi and starlette are imported only under `service/api/` (type-only imports under
  `if TYPE_CHECKING:` do not count: they run nowhere).
- `export`, `pacs` and `loadtest` never import `service.api`: they use the core library, not the web app.
- No import circles among the project's modules (every import counts here, type-only ones included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cxr", "service", "export", "pacs", "loadtest")
HTTP = ("fastapi", "starlette")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path, known: set[str], *, runtime_only: bool) -> set[str]:
    """Every module `path` imports (absolute names), project modules resolved to the deepest known one."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from service.api import classify` imports the module service.api.classify
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return found


def _violations(rules: list[tuple[str, tuple[str, ...]]], exempt: str = "") -> list[str]:
    modules = _modules()
    known = set(modules)
    bad: list[str] = []
    for name, path in sorted(modules.items()):
        for prefix, forbidden in rules:
            if not (name == prefix or name.startswith(prefix + ".")) or (exempt and name.startswith(exempt)):
                continue
            for imported in sorted(imports_of(path, known, runtime_only=True)):
                if any(imported == f or imported.startswith(f + ".") for f in forbidden):
                    bad.append(f"{name} imports {imported}")
    return bad


def test_core_never_imports_the_http_layer() -> None:
    rules = [
        ("service.imaging", ("service.api", *HTTP, "onnxruntime")),
        ("service.inference", ("service.api", *HTTP)),
        ("export", ("service.api",)),
        ("pacs", ("service.api",)),
        ("loadtest", ("service.api",)),
    ]
    assert _violations(rules) == []


def test_only_service_api_imports_fastapi_or_starlette_inside_service() -> None:
    assert _violations([("service", HTTP)], exempt="service.api") == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph[node]:
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a package's __init__ is not an edge target unless
    imported as such)."""
    modules = _modules()
    known = set(modules)
    return {
        name: {m for m in imports_of(path, known, runtime_only=False) if m in known and m != name}
        for name, path in modules.items()
    }


def test_no_import_circles() -> None:
    assert _cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])],
)
def test_the_circle_finder_finds_circles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected
