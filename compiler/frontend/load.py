"""Getting a model into gimlet: load, export, decompose, import.

Accepts an ExportedProgram, a `.pt2` file from `torch.export.save`, an
`nn.Module` with example inputs, or `path/model.py:factory` where the factory
returns `(module, example_inputs)` or `(module, example_inputs, dynamic_shapes)`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from xdsl.dialects.builtin import ModuleOp

from gimlet.errors import UserError
from gimlet.frontend.importer import import_program

aten = torch.ops.aten

# Ops kept whole instead of decomposed: backends want them fused.
KEEP_WHOLE = (aten.scaled_dot_product_attention.default,)


def load_factory(spec: str) -> tuple[torch.nn.Module, tuple[Any, ...], Any]:
    """`path/model.py:factory` -> (module, example_inputs, dynamic_shapes or None)."""
    path, _, name = spec.rpartition(":")
    if not path and not os.path.exists(spec):
        raise UserError(f"{spec}: no such file or directory")
    if not path or not name:
        raise UserError(f"expected MODEL as path/model.py:factory or a .pt2 file, got '{spec}'")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    mod_name = "gimlet_user_" + os.path.splitext(os.path.basename(path))[0]
    loader = importlib.util.spec_from_file_location(mod_name, path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"{path}: failed to import: {_user_frame(e, path)}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"{path}: no function '{name}' (found: {_public_callables(module)})")
    try:
        made = factory()
    except Exception as e:
        raise UserError(f"{path}: {name}() failed: {_user_frame(e, path)}") from e
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise UserError(
            f"{path}: {name}() must return (module, example_inputs[, dynamic_shapes]), "
            f"got {type(made).__name__}"
        )
    model, inputs = made[0], made[1]
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{path}: {name}() returned {type(model).__name__}, not a torch.nn.Module")
    inputs = tuple(inputs) if isinstance(inputs, list | tuple) else (inputs,)
    return model, inputs, made[2] if len(made) == 3 else None


def _public_callables(module: Any) -> str:
    names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
    return ", ".join(sorted(names)) or "none"


def _user_frame(e: BaseException, path: str) -> str:
    """`file:line: Error: msg` using the innermost frame inside the user's file."""
    where = ""
    for frame in traceback.extract_tb(e.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            where = f"{path}:{frame.lineno}: "
    return f"{where}{type(e).__name__}: {e}"


def export(
    model: torch.nn.Module, inputs: Sequence[Any], dynamic_shapes: Any = None
) -> ExportedProgram:
    model = model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, tuple(inputs), dynamic_shapes=dynamic_shapes)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"torch.export failed: {type(e).__name__}: {msg}") from e


def decompose(ep: ExportedProgram) -> ExportedProgram:
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        table.pop(op, None)
    return ep.run_decompositions(table)


def load_program(
    model: Any, example_inputs: Sequence[Any] | None = None, dynamic_shapes: Any = None
) -> ExportedProgram:
    """Any accepted model form -> an un-decomposed ExportedProgram."""
    if isinstance(model, ExportedProgram):
        return model
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise UserError("compiling an nn.Module needs example_inputs")
        return export(model, example_inputs, dynamic_shapes)
    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if path.endswith(".pt2"):
            if not os.path.isfile(path):
                raise UserError(f"{path}: no such file")
            try:
                return torch.export.load(path)
            except Exception as e:
                raise UserError(
                    f"{path}: not a torch.export archive ({type(e).__name__}: {e})"
                ) from e
        module, inputs, dyn = load_factory(path)
        return export(module, inputs, dyn if dynamic_shapes is None else dynamic_shapes)
    raise UserError(f"cannot compile a {type(model).__name__}")


def import_model(
    model: Any, example_inputs: Sequence[Any] | None = None, dynamic_shapes: Any = None
) -> tuple[ModuleOp, dict[str, np.ndarray]]:
    ep = decompose(load_program(model, example_inputs, dynamic_shapes))
    return import_program(ep)
