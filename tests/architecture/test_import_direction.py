"""Imports flow one way: policies depends on nothing of ours; the runtime never sees webhook or controller."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {
    "contracts",
    "kube",
    "policies",
    "certs",
    "webhook",
    "controller",
    "agent_runtime",
    "agentops",
    "localstack",
}
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "kube": set(),
    "policies": {"contracts"},
    "certs": {"kube"},
    "webhook": {"contracts", "kube", "policies", "certs"},
    "controller": {"contracts", "kube", "policies"},
    "agent_runtime": {"contracts"},
    "agentops": OURS - {"localstack"},
    "localstack": OURS,
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Our top-level packages imported by each module of ``package``."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = (names & OURS) - {package}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    modules = imported_packages(package)
    assert modules, f"{package} has no modules"
    offending = {module: sorted(names - ALLOWED[package]) for module, names in modules.items()}
    offending = {module: names for module, names in offending.items() if names}
    assert not offending, f"{package} may import only {sorted(ALLOWED[package])}: {offending}"


@pytest.mark.parametrize("package", sorted(OURS))
def test_package_docstring_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc, f"{package}/__init__.py needs a docstring"
    assert "Owns:" in doc, f"{package}/__init__.py docstring should say what it owns"
    assert "May import:" in doc, f"{package}/__init__.py docstring should say what it may import"
