"""The layers only import downwards: front door (ftlab/) -> flows -> services -> services/common.
Read from the source (AST, every import including those inside functions), nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("trainer", "quantizer", "evaluator")

# package folder -> module prefixes its code must not import
FORBIDDEN = {
    "services/common": ("ftlab", "flows", *(f"services.{s}" for s in SERVICES)),
    **{f"services/{s}": ("ftlab", "flows", *(f"services.{o}" for o in SERVICES if o != s)) for s in SERVICES},
    "flows": ("ftlab",),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import statement in ``source``; ``from a import b``
    gives both ``a`` and ``a.b`` (b may be a module)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path.read_text()):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_checker_sees_imports_inside_functions_and_from_imports():
    src = "def f():\n    from services.trainer import recipe\nimport flows.pipeline as p\n"
    assert imported_modules(src) == [(3, "flows.pipeline"), (2, "services.trainer"), (2, "services.trainer.recipe")]
    assert not [m for _, m in imported_modules("from services.common import storage\n") if m.startswith("flows")]


def test_no_layer_imports_one_above_it():
    bad = [v for folder, forbidden in FORBIDDEN.items() for v in violations(folder, forbidden)]
    assert not bad, "imports against the layering (docs/ARCHITECTURE.md):\n" + "\n".join(bad)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(source: str) -> list[str]:
    """The modules ``source`` imports when it runs: every import, those inside functions too, but
    not those under ``if TYPE_CHECKING:`` (annotations only; they never execute)."""
    tree = ast.parse(source)
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    kept = ast.Module(body=[], type_ignores=[])
    kept.body = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in typing_only]
    return [m for _, m in imported_modules(ast.unparse(kept))] if kept.body else []


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports when it runs (every import, those inside functions
    too; not ``TYPE_CHECKING`` ones)."""
    files = [p for top in ("ftlab", "flows", "services") for p in (ROOT / top).rglob("*.py")
             if "generated" not in p.parts]
    known = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        me = module_name(path)
        graph[me] = {m for m in runtime_imports(path.read_text()) if m in known and m != me}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def test_the_cycle_finder_finds_a_cycle_inside_a_package():
    assert cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "b": {"a.x"}}) == [["a.x", "a.y", "a.z"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import b\ndef f():\n    import c\n"
    assert runtime_imports(src) == ["typing", "typing.TYPE_CHECKING", "c"]


def test_no_import_cycle_anywhere():
    found = cycles(import_graph())
    assert not found, "import cycles (every import counts, those inside functions too):\n" + "\n".join(
        " <-> ".join(c) for c in found)
