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
