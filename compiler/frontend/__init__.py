"""The frontend: a PyTorch model in, gml IR and its weights out.

load.py (load a `.pt2`, an `nn.Module` or `file.py:factory`; torch.export; decompose to
core ATen) -> importer.py (FX graph -> gml, one converter per ATen overload) ->
converters.py (the converters, registered in registry.py's table).
"""

from gimlet.frontend.importer import import_program
from gimlet.frontend.load import decompose, export, import_model, load_factory, load_program

__all__ = ["decompose", "export", "import_model", "import_program", "load_factory", "load_program"]
