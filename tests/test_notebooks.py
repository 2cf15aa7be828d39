"""The committed notebooks hold no logic: a ``parameters`` cell of literals, then calls into
optkit's public names and what they return; no definitions, no private imports, no outputs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))


def code_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_notebooks_are_found() -> None:
    """The five days and the three final reports: a lint over no notebook passes vacuously."""
    names = {p.name for p in NOTEBOOKS}
    assert len(NOTEBOOKS) >= 8 and "05-integration.ipynb" in names
    assert {"sprint-summary.ipynb", "performance-report.ipynb", "deployment-guide.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_first_code_cell_is_parameters_of_literals(path: Path) -> None:
    """Exactly one cell is tagged ``parameters`` (papermill's), it is the first code cell, and
    it only binds names to literals."""
    cells = code_cells(path)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[0], path.name
    for node in ast.parse(source(cells[0])).body:
        assert isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets), \
            f"{path.name}: parameters must be `name = literal`, got {ast.unparse(node)!r}"
        ast.literal_eval(node.value)  # raises on anything but a literal


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_logic_and_no_private_imports(path: Path) -> None:
    """No def, class or lambda; no comprehension inside another; every import is a public name
    (nothing under ``optkit._…`` or ``optkit.<part>._…``)."""
    problems = []
    for number, cell in enumerate(code_cells(path)):
        for node in ast.walk(ast.parse(source(cell))):
            where = f"{path.name} cell {number}"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                problems.append(f"{where}: defines {type(node).__name__}")
            if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                inner = [n for n in ast.walk(node) if n is not node and isinstance(
                    n, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp))]
                if inner:
                    problems.append(f"{where}: a comprehension inside a comprehension")
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [f"{node.module}.{alias.name}" for alias in node.names]
            for module in modules:
                if module.startswith("optkit") and any(part.startswith("_")
                                                       for part in module.split(".")):
                    problems.append(f"{where}: imports private {module}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    """An executed copy is a run's report, never committed: no outputs, no execution counts."""
    for cell in code_cells(path):
        assert not cell.get("outputs") and cell.get("execution_count") is None, path.name
