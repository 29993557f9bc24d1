"""The package's shape: dependencies run one way, no module over 350 lines, no issue numbers.

    core (config, params, numerics, capture, data, model, train, siblings, trajectories)
      <- tracking (talks to MLflow)      <- workflows, cli (the entry points)
      <- analysis (plain functions over arrays, never MLflow)
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "weightspace"
CORE = {"config", "params", "numerics", "capture", "threads", "data", "model", "train", "siblings", "trajectories"}
# what each layer may import from weightspace (besides itself); mlflow only where marked
ALLOWED = {
    "core": ({"core"}, False),
    "tracking": ({"core", "tracking"}, True),
    "analysis": ({"core", "analysis"}, False),
}


def modules():
    """(layer, dotted name, path) of every module of the package, the analysis included."""
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG).with_suffix("").parts
        yield layer_of(parts), "weightspace." + ".".join(parts), path
    for path in sorted((REPO / "analysis").rglob("*.py")):
        parts = ("analysis",) + path.relative_to(REPO / "analysis").with_suffix("").parts
        yield "analysis", "weightspace." + ".".join(parts), path


def layer_of(parts: tuple[str, ...]) -> str:
    head = parts[0]
    if head in CORE or head == "__init__":
        return "core"
    if head in ("tracking", "analysis"):
        return head
    return "entry"  # workflows, cli, __main__


def imported(name: str, path: Path) -> set[str]:
    """Absolute names of everything the module imports, at any depth (lazy imports too)."""
    pkg = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def weightspace_layer(mod: str) -> str | None:
    parts = mod.split(".")
    if parts[0] != "weightspace" or len(parts) < 2:
        return None
    return layer_of(tuple(parts[1:]))


@pytest.mark.parametrize("layer, name, path", [m for m in modules() if m[0] in ALLOWED], ids=lambda x: str(x))
def test_dependencies_run_one_way(layer, name, path):
    may, mlflow_ok = ALLOWED[layer]
    for mod in imported(name, path):
        target = weightspace_layer(mod)
        if target is not None and mod != "weightspace":
            assert target in may, f"{name} ({layer}) imports {mod} ({target})"
        if not mlflow_ok:
            assert not mod.startswith("mlflow"), f"{name} ({layer}) imports {mod}"


def test_the_layer_check_sees_relative_and_lazy_imports(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("from ..tracking import runs\n\ndef f():\n    from weightspace.cli import main\n")
    got = imported("weightspace.analysis.x", p)
    assert "weightspace.tracking.runs" in got and "weightspace.cli.main" in got
    assert weightspace_layer("weightspace.tracking.runs") == "tracking"


@pytest.mark.parametrize("root", ["src", "analysis", "entrypoints"])
def test_no_module_is_longer_than_350_lines(root):
    long = {str(p.relative_to(REPO)): n for p in (REPO / root).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


def test_no_code_cites_issue_numbers():
    pat = re.compile(r"\bissue[- ]?#?\d+", re.I)
    hits = [f"{p.relative_to(REPO)}:{i}" for root in ("src", "analysis", "entrypoints", "benchmarks")
            for p in (REPO / root).rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pat.search(line)]
    assert not hits, hits
