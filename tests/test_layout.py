"""The package's shape: dependencies run one way, no module over 350 lines, no issue numbers.

    core (config, params, numerics, capture, data, model, train, siblings, trajectories, predictions)
      <- tracking (talks to MLflow)      <- workflows, cli (the entry points)
      <- analysis (plain functions over arrays, never MLflow)
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "weightspace"
CORE = {
    "config",
    "params",
    "numerics",
    "capture",
    "threads",
    "data",
    "model",
    "train",
    "siblings",
    "trajectories",
    "predictions",
}
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


def module_graph() -> dict[str, set[str]]:
    """Each module's direct imports of other weightspace modules, TYPE_CHECKING and lazy ones too.

    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``.
    """
    mods = {name: path for _, name, path in modules()}
    known = {n.removesuffix(".__init__") for n in mods}
    graph = {}
    for name, path in mods.items():
        node = name.removesuffix(".__init__")
        targets = set()
        for mod in imported(name, path):
            while mod and mod not in known:
                mod = mod.rpartition(".")[0]
            if mod and mod != node and mod != "weightspace":
                targets.add(mod)
        graph[node] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_not_even_for_type_checking():
    found = cycles(module_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


ENTRY_POINTS = {p.stem for p in (REPO / "entrypoints").glob("*.py") if p.stem != "__init__"}


def shared_names(paths: list[Path], roots: list[Path]) -> dict[str, list[str]]:
    """Module or package names used more than once, and names of entry points reused by the library."""
    seen: dict[str, list[str]] = {}
    for root in roots:
        for p in paths:
            if p.is_relative_to(root):
                rel = p.relative_to(root)
                if p.stem != "__init__":
                    seen.setdefault(p.stem, []).append(str(rel))
                for package in rel.parts[:-1]:
                    label = str(Path(*rel.parts[:rel.parts.index(package) + 1])) + "/"
                    if label not in seen.setdefault(package, []):
                        seen[package].append(label)
    return {n: where for n, where in seen.items() if len(where) > 1 or n in ENTRY_POINTS}


def test_no_two_modules_share_a_name():
    """A name means one module: no stem twice, no module named like a package or an entry point."""
    roots = [PKG, REPO / "analysis"]
    paths = [p for root in roots for p in root.rglob("*.py")]
    shared = shared_names(paths, roots)
    shared.pop("analysis", None)  # the package of analysis/ itself is named like its entry point
    assert not shared, shared


def test_the_name_check_finds_a_shared_name(tmp_path):
    for rel in ("a/x.py", "a/b/x.py", "a/c/y.py", "a/y/__init__.py", "a/single.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    root = tmp_path / "a"
    got = shared_names(list(root.rglob("*.py")), [root])
    assert set(got) == {"x", "y", "single"} | ({"single"} & ENTRY_POINTS)
