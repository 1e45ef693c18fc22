"""The frontend: a PyTorch model in, gml IR and its weights out.

load.py (load a `.pt2`, an `nn.Module` or `file.py:factory`; torch.export; decompose to
core ATen; `frontend()`, which goes through the export cache) -> importer.py (FX graph ->
gml, one converter per ATen overload) -> converters.py (the converters, registered in
registry.py's table). cache.py is the export cache.

The names below are imported on first use: a compile that hits the export cache never
needs the importer (nor sympy, which it pulls in).
"""

from __future__ import annotations

from typing import Any

__all__ = ["decompose", "export", "import_model", "import_program", "load_factory", "load_program"]


def __getattr__(name: str) -> Any:
    if name == "import_program":
        from gimlet.frontend.importer import import_program

        return import_program
    if name in __all__:
        from gimlet.frontend import load

        return getattr(load, name)
    raise AttributeError(f"module 'gimlet.frontend' has no attribute {name!r}")
