"""The import structure DESIGN.md promises: techniques are algorithms only (they never import the harness, the
zoo, training code, commands, presets or the public API), and accel has no import cycles, counting the
imports inside functions too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "accel"
TECHNIQUES = ("speculative", "distill", "annealing", "cache", "align")
ABOVE = ("accel.harness", "accel.zoo", "accel.train", "accel.commands", "accel.presets", "accel.api", "accel.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """accel modules that ``name`` imports anywhere in its source (``from a import b``: ``a.b`` when b is a
    module of accel, else ``a``)."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):  # ``if TYPE_CHECKING:`` imports never run: annotations only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("accel")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("accel") and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {m: imports(m) for m in MODULES}


@pytest.mark.parametrize("package", TECHNIQUES)
def test_techniques_import_no_upper_layer(package):
    bad = {m: sorted(i for i in deps if i.startswith(ABOVE))
           for m, deps in GRAPH.items() if m.startswith(f"accel.{package}")}
    assert not {m: d for m, d in bad.items() if d}


def test_models_import_only_models_and_shared_types():
    allowed = ("accel.models", "accel.types", "accel.sampling", "accel.checkpoint", "accel.validate")
    bad = {m: sorted(d for d in deps if not d.startswith(allowed))
           for m, deps in GRAPH.items() if m.startswith("accel.models")}
    assert not {m: d for m, d in bad.items() if d}


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph; a component of size > 1 is a cycle.
    The package ``accel`` itself re-exports the API, so edges into ``accel`` (implicit in every submodule
    import) are not counted."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v] - {"accel"}:
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
            comps.append(comp)

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert [sorted(c) for c in comps if len(c) > 1] == []
