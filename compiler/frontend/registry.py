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


# Importing torch.export's graph as it comes (its "training IR") skips run_decompositions,
# which retraces the whole program (~0.75 s of a 1.3 s GPT-2 small decode frontend here,
# ~1.8 s on the H200 machine). A graph qualifies when every node is an op with a converter
# that is not in DECOMPOSED_FIRST and passes its AS_EXPORTED check, and nothing mutates
# (frontend/load.py: as_exported). For the ops torch's default decompositions rewrite, the
# converter emits the IR their decomposition would have been imported as, so the imported
# IR is the same either way (tests/test_as_exported.py compares both paths op for op).
#
# Converted ops whose decomposition is imported as other gml ops than their own converter
# emits: a program holding one is decomposed first. tests/test_as_exported.py checks that every
# converted op torch rewrites is either here or known to import the same as decomposed.
DECOMPOSED_FIRST = frozenset(
    {
        aten.rsub.Scalar,
        aten.ones_like.default,
        aten.zeros_like.default,
        aten.clamp_min.Tensor,
        aten.clamp_max.Tensor,
    }
)

# Per-node conditions for ops imported as exported (op -> whether this node qualifies);
# a node failing its check has the program decomposed first.
AS_EXPORTED: dict[Any, Callable[[torch.fx.Node], bool]] = {}


def as_exported_when(*targets: Any) -> Callable[[Callable[[torch.fx.Node], bool]], Any]:
    def register(check: Callable[[torch.fx.Node], bool]) -> Callable[[torch.fx.Node], bool]:
        for t in targets:
            AS_EXPORTED[t] = check
        return check

    return register


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
