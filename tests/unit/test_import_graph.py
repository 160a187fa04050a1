"""The package's import graph has no cycle, counting the imports under `if TYPE_CHECKING:` too: a
module that needs another's type while that one imports it back depends on an interface instead
(training/callbacks/base.py's Trainer protocol, diagnostics/findings.py). Imports inside functions
are deliberate deferrals (torch, optional packages) and are not edges here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mlflow_core"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports when it is imported (module level and TYPE_CHECKING)."""
    found: set[str] = set()

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Import):
                found.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.update(filter(None, [known(node.module)]
                                    + [known(f"{node.module}.{a.name}") for a in node.names]))
    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    found.discard(name)
    return {m for m in found if m.startswith("mlflow_core")}


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 300  # the walk sees the package's imports
    done: set[str] = set()
    cycles: list[list[str]] = []

    def walk(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append([*trail[trail.index(node):], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        walk(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles[:10])
