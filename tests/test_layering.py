"""Imports run one way, down the pipeline (docs/architecture.md draws the same graph).

Every gimlet module is parsed (not imported) and every `import` in it counts: at module
level, inside functions and under `if TYPE_CHECKING:` alike, since a function-local
import is still a dependency. A failure names the module, the line and the import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gimlet.layering import Import, imports, layer_of, modules

# Which layers a layer may import (its own included). The driver (cli, api, pass manager,
# bundle writer, docgen) sits on top and may import anything.
MAY_IMPORT: dict[str, set[str]] = {
    "dialects": {"dialects"},
    "core": {"dialects", "core"},
    "frontend": {"dialects", "core", "frontend"},
    "placement": {"dialects", "core", "placement"},
    "passes": {"dialects", "core", "placement", "passes"},
    "backends": {"dialects", "core", "backends"},
    # the launcher resolves --target to refuse a bundle built for another cluster, and
    # that is all the runtime may ask of placement (no solvers, no cost model)
    "runtime": {"dialects", "core", "backends", "runtime", "gimlet.placement.target"},
}


def _allowed(edge: Import) -> bool:
    rule = MAY_IMPORT.get(layer_of(edge.source))
    return rule is None or layer_of(edge.target) in rule or edge.target in rule


def test_imports_follow_the_layers() -> None:
    bad = [e for e in imports() if not _allowed(e)]
    assert not bad, "imports against the layering (tests/test_layering.py::MAY_IMPORT):\n" + (
        "\n".join(
            f"  {e.path}:{e.line}: {e.source} ({layer_of(e.source)}) imports {e.target} "
            f"({layer_of(e.target)})"
            for e in bad
        )
    )


# Cycles that exist and are owned elsewhere; a new one fails the test. None is left: the
# GPU lowering's op handlers in conv.py and tensor_ops.py reach it through lower.py's
# `families` table instead of importing codegen back.
KNOWN_CYCLES: list[set[str]] = []


def test_no_import_cycles_between_modules() -> None:
    """No two modules import each other, directly or through others (Tarjan's SCCs)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for e in imports():
        if e.target != e.source and e.target in graph:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, set()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 and set(scc) not in KNOWN_CYCLES:
                cycles.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_bad_import_is_named(tmp_path: Path) -> None:
    """The checker sees function-local imports and reports the offending line."""
    src = tmp_path / "dialects" / "bad.py"
    src.parent.mkdir()
    src.write_text("def f():\n    from gimlet.passes import place\n")
    found = imports({"gimlet.dialects": src.parent})
    assert [(e.source, e.target, e.line) for e in found] == [
        ("gimlet.dialects.bad", "gimlet.passes", 2)
    ]
    assert not _allowed(found[0])


@pytest.mark.parametrize("module", ["gimlet", "gimlet.backends", "gimlet.runtime"])
def test_importing_gimlet_starts_nothing(module: str) -> None:
    """Importing gimlet, its backend registry or the runtime package neither imports
    torch.distributed nor any registered backend (they load on first use)."""
    code = (
        f"import sys, {module}\n"
        "from gimlet.backends import REGISTRY\n"
        "loaded = [m for m in sys.modules if m.startswith('torch.distributed') or "
        "m in REGISTRY.values()]\n"
        "print(','.join(sorted(loaded)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
