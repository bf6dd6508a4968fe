"""The package's layout rules, read from the source: no import cycle inside ``defenses`` (lazy
imports inside functions count: a cycle there is still two modules that need each other), the
engine never imports the dashboard, Streamlit or the sample models built on it, and Ray only where
many jobs run."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "defenses"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file, resolved to its full dotted name."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from . import data_torchvision`
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_defenses_has_no_import_cycle():
    g = graph()
    assert "defenses.readers.data_torchvision" in g["defenses.readers.data"]  # the graph does see lazy and relative imports
    assert cycles(g) == []


def test_the_engine_imports_neither_the_dashboard_nor_streamlit_nor_the_samples_and_ray_only_in_parallel():
    for path in PKG.rglob("*.py"):
        tops = {i.split(".")[0] for i in imports_of(path)}
        # sample_models is built on defenses: the engine finds it through an entry point (sources.py)
        assert not tops & {"dashboard", "streamlit", "sample_models"}, path
        if "ray" in tops:
            assert path.name == "parallel.py", f"{path} imports Ray; only defenses/runs/parallel.py may"
