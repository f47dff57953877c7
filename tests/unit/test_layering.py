"""The engine knows nothing of Prefect: tasks/ and checks/ never import it (STYLE.md principle 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["tasks", "checks"])
def test_engine_does_not_import_prefect(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "prefect" or n.startswith("prefect.") or n.startswith("flows") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"{package}/ must not import prefect or flows: {offenders}"


def test_checker_catches_an_import(tmp_path: Path) -> None:
    """The walker above really sees imports (so the test above can fail)."""
    src = "import os\nfrom prefect import flow\n"
    tree = ast.parse(src)
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "prefect"]
    assert found
