"""quant/pipeline/ keeps the layering of docs/DESIGN.md ("Pipeline module map"): each stage module
imports only the modules below it, and quant.api is the import surface with no logic of its own."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "quant" / "pipeline"

# module -> (pipeline modules it may import at run time, extra ones it may import for types only)
ALLOWED: dict[str, tuple[set[str], set[str]]] = {
    "prepare": (set(), set()),
    "arithmetic": (set(), set()),
    "staleness": ({"prepare"}, set()),
    "calibrate": ({"prepare", "staleness"}, set()),
    "quantize": ({"prepare", "staleness", "arithmetic"}, set()),
    "build": ({"prepare", "quantize"}, set()),
    "sensitivity": ({"prepare", "quantize"}, set()),
    "report": ({"prepare"}, {"calibrate"}),
    "layers": ({"prepare", "quantize"}, set()),
    "evaluate": ({"prepare", "arithmetic", "quantize", "report", "layers"}, {"calibrate"}),
    "run": ({"prepare", "calibrate", "quantize", "evaluate"}, set()),
    "distributed": ({"prepare", "calibrate", "evaluate", "sensitivity"}, set()),
    "tensorrt": ({"prepare", "report"}, set()),
}


def _pipeline_imports(path: Path) -> tuple[set[str], set[str]]:
    """(pipeline modules imported at run time, those imported only under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    runtime: set[str] = set()
    types: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["quant", "pipeline"] and len(parts) >= 3 and parts[2] in ALLOWED:
                (types if id(node) in typing_only else runtime).add(parts[2])
    return runtime - {path.stem}, types - runtime - {path.stem}


def test_every_stage_module_is_in_the_map() -> None:
    modules = {p.stem for p in PIPELINE.glob("*.py") if p.stem != "__init__"}
    assert modules == set(ALLOWED), "update docs/DESIGN.md's module map and ALLOWED together"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_stage_imports_only_what_lies_below_it(module: str) -> None:
    runtime, types = _pipeline_imports(PIPELINE / f"{module}.py")
    allowed_runtime, allowed_types = ALLOWED[module]
    assert runtime <= allowed_runtime, f"{module} imports {sorted(runtime - allowed_runtime)}"
    assert types <= allowed_runtime | allowed_types, f"{module} imports {sorted(types - allowed_runtime - allowed_types)}"


def test_the_allowed_imports_have_no_cycle() -> None:
    seen: dict[str, int] = {}

    def depth(m: str, path: tuple[str, ...] = ()) -> int:
        assert m not in path, f"import cycle: {' -> '.join((*path, m))}"
        if m not in seen:
            seen[m] = 1 + max((depth(d, (*path, m)) for d in ALLOWED[m][0] | ALLOWED[m][1]), default=0)
        return seen[m]

    assert depth("run") > depth("evaluate") > depth("report") > depth("prepare") == 1
    for m in ALLOWED:
        depth(m)


def test_api_is_the_import_surface_of_the_pipeline() -> None:
    from quant import api

    tree = ast.parse((ROOT / "quant" / "api.py").read_text(encoding="utf-8"))
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert defined == [], f"quant/api.py defines {defined}: stage logic belongs in quant/pipeline/"
    assert len(api.__all__) == len(set(api.__all__))
    for name in api.__all__:
        obj = getattr(api, name)
        if name != "DEMO":
            assert obj.__module__.startswith("quant.pipeline."), name
            assert inspect.getdoc(obj), f"quant.api.{name} has no docstring"
