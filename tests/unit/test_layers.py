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
