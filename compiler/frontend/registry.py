"""The converter table: ATen overload -> the function that imports it.

Converters (converters.py) register here with `@converts(...)`; the importer
(importer.py) reads the table. Both import this module and neither imports the
other's internals, so the table is the one contract between them: `Emitter` is
everything a converter may ask of the importer while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Attribute, Operation, SSAValue

from gimlet.dialects.shapes import DYN
from gimlet.dtypes import element_type_for_torch
from gimlet.errors import UserError

aten = torch.ops.aten


class Emitter(Protocol):
    """The importer as a converter sees it (implemented by importer.Importer)."""

    location: Attribute

    def emit(self, op: Operation) -> SSAValue: ...
    def value(self, arg: Any) -> SSAValue: ...
    def scalar(self, value: float | bool, element_type: Attribute) -> SSAValue: ...
    def as_type(self, arg: Any, element_type: Attribute) -> SSAValue: ...
    def sizes(self, t: TensorType, val: Any) -> list[SSAValue]: ...
    def sym(self, d: Any) -> SSAValue: ...


Converter = Callable[[Emitter, torch.fx.Node], Any]
CONVERTERS: dict[Any, Converter] = {}

# Nodes that only assert facts torch already checked while tracing.
ASSERTIONS = {
    aten._assert_tensor_metadata.default,
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
    aten.sym_constrain_range.default,
}


def converts(*targets: Any) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for t in targets:
            CONVERTERS[t] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted({str(t) for t in CONVERTERS} | {str(t) for t in ASSERTIONS})


def meta_type(val: Any) -> TensorType:
    """The gml type of an FX node's FakeTensor (`?` for symbolic dims)."""
    if not isinstance(val, torch.Tensor):
        raise UserError(f"expected a tensor value, got {type(val).__name__}")
    shape = [d if isinstance(d, int) else DYN for d in val.shape]
    return TensorType(element_type_for_torch(val.dtype), shape)
