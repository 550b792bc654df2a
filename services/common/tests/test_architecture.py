"""The tree keeps telling the architecture: no import circle among the hand-written packages (deferred
imports inside functions count too: a cycle hidden in a function is still a cycle), and no hand-written
file longer than 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MAX_LINES = 600
# Hand-written Python: every service package, the client, tests, benches and scripts.
SOURCE_ROOTS = [ROOT / "services", ROOT / "clients" / "python", ROOT / "tests", ROOT / "bench"]


def _hand_written() -> list[Path]:
    return sorted(
        path
        for root in SOURCE_ROOTS
        for path in root.rglob("*.py")
        if "_pb2" not in path.name and not {".venv", "node_modules", "build"} & set(path.parts)
    )


def _module_name(path: Path) -> str | None:
    """The dotted module name of a file of an importable package (None for tests and scripts)."""
    for base in [*(ROOT / "services").iterdir(), ROOT / "clients" / "python"]:
        if path.is_relative_to(base):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[0].startswith("lomas") and "tests" not in parts:
                return ".".join(p for p in parts if p != "__init__")
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, wherever the import stands (top level or inside a function)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {name: path for path in _hand_written() if (name := _module_name(path))}
    return {
        name: {target for target in _imports(path, name) if target in modules and target != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_scan_sees_the_packages() -> None:
    graph = _graph()
    assert {"lomas_budget.api", "lomas_gateway.lifecycle", "lomas.client.client"} <= set(graph)
    assert "lomas_common.errors" in graph["lomas_gateway.lifecycle"]


def test_no_import_circle() -> None:
    assert _cycles(_graph()) == []


def test_a_circle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_hand_written_file_is_longer_than_600_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _hand_written()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
