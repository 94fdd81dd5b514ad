"""The layout shows the architecture: a service imports only its own package and libs/common,
and libs/common imports no service (what two services share lives in libs/common)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_service_imports_another_service() -> None:
    services = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__main__.py").exists())
    assert {"onboarding", "portfolio_refresh", "status_api", "symbol_batch"} <= set(services)
    crossings = [
        f"{path.relative_to(ROOT)} imports {module}"
        for name in services
        for path in sorted((ROOT / "services" / name).rglob("*.py"))
        for module in imported_modules(path)
        if module.startswith("services.") and module.split(".")[1] != name
    ]
    assert crossings == []


def test_libs_common_imports_no_service() -> None:
    crossings = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "libs" / "common").rglob("*.py"))
        for module in imported_modules(path)
        if module == "services" or module.startswith("services.")
    ]
    assert crossings == []


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports (at any depth in the file: a lazy import
    inside a function is still a dependency)."""
    modules: dict[str, Path] = {}
    for package in ("libs", "services", "sigmabatch"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
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
                    cycles.append(sorted(component))
    return cycles


def test_import_cycle_detection_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert {"sigmabatch.cli", "sigmabatch.demo", "libs.common.bus"} <= set(graph)
    assert import_cycles(graph) == []
