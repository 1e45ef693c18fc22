"""gimlet's import graph, read from the source (parsed, never imported).

The layers follow the pipeline: dialects, then the core every stage shares (errors, dtypes,
IR I/O, the reference interpreter, artefact files), then the stages (frontend, placement,
passes, backends, runtime), then the driver on top (cli, api, pass manager, bundle writer).
tests/test_layering.py holds the rules of which layer may import which; docgen draws the
graph into docs/architecture.md.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# (layer, module prefixes, folder), first match wins; "gimlet" catches the driver.
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("dialects", ("gimlet.dialects",), "dialects/"),
    (
        "core",
        ("gimlet.errors", "gimlet.dtypes", "gimlet.ir", "gimlet.interpreter", "gimlet.artifacts"),
        "compiler/",
    ),
    ("frontend", ("gimlet.frontend",), "compiler/frontend/"),
    ("placement", ("gimlet.placement",), "compiler/placement/"),
    ("passes", ("gimlet.passes",), "passes/"),
    ("backends", ("gimlet.backends",), "backends/"),
    ("runtime", ("gimlet.runtime",), "runtime/"),
    ("driver", ("gimlet",), "compiler/"),
]

# The packages that own a top-level folder; their subpackages are found by walking it.
ROOTS = ("gimlet", "gimlet.dialects", "gimlet.passes", "gimlet.backends", "gimlet.runtime")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the gimlet module (or package) it imports
    path: str  # the source file, for messages
    line: int


def layer_of(module: str) -> str:
    for layer, prefixes, _ in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return "external"


def root_dirs() -> dict[str, Path]:
    """Where each root package's folder is (the editable install maps them)."""
    return {r: Path(importlib.import_module(r).__file__ or "").parent for r in ROOTS}


def _files(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every .py under the roots (the deepest root wins)."""
    found: dict[str, Path] = {}
    for root, folder in sorted(roots.items(), key=lambda kv: len(kv[0])):
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            if "__pycache__" in rel:
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            found[".".join([root, *parts])] = path
    return found


def modules(roots: Mapping[str, Path] | None = None) -> list[str]:
    return sorted(_files(roots or root_dirs()))


def contents(layer: str) -> list[str]:
    """What the picture names in a layer's box: its subpackages as `name/` (backends/cpu/,
    ...) and, for the core, which root modules it is. Other modules are left out, so
    adding one does not redraw the picture; a new folder or a new arrow does."""
    prefixes = next(p for name, p, _ in LAYERS if name == layer)
    files = _files(root_dirs())
    names = set()
    for module, path in files.items():
        if layer_of(module) != layer:
            continue
        prefix = next(p for p in prefixes if module == p or module.startswith(p + "."))
        if files[prefix].name != "__init__.py":  # the core: named module by module
            names.add(prefix.rpartition(".")[2])
            continue
        rest = module[len(prefix) + 1 :].split(".") if module != prefix else []
        if len(rest) > 1 or (rest and path.name == "__init__.py"):
            names.add(rest[0] + "/")
    return sorted(names)


def imports(roots: Mapping[str, Path] | None = None) -> list[Import]:
    """Every import of a gimlet module by a gimlet module, wherever it sits in the file."""
    files = _files(roots or root_dirs())
    found = []
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base]) if base else ".".join(up)
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]  # fmt: skip
            else:
                continue
            for target in dict.fromkeys(targets):
                if target == "gimlet" or target.startswith("gimlet."):
                    found.append(Import(module, target, str(path), node.lineno))
    return found


def layer_graph(roots: Mapping[str, Path] | None = None) -> dict[str, set[str]]:
    """Layer -> the layers it imports directly (its own left out)."""
    graph: dict[str, set[str]] = {layer: set() for layer, _, _ in LAYERS}
    for e in imports(roots):
        a, b = layer_of(e.source), layer_of(e.target)
        if a != b:
            graph[a].add(b)
    return graph
