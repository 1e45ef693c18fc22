"""An ONNX graph under construction, fed one gml op at a time.

Each SSA value of the function becomes an ONNX tensor name; `index` values (sizes)
become 1-element int64 tensors, the form ONNX's Reshape/Expand/Slice take their shape
operands in, so a size never round-trips through a scalar. Values known at compile time
(weights, literals, and what is computed from them alone, e.g. a transposed weight or a
static `gml.dim`) are folded with the reference interpreter and become initializers, so
TensorRT and onnxruntime see the folded weight rather than a Transpose node.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from xdsl.dialects.builtin import IndexType, TensorType
from xdsl.ir import Attribute, Operation, SSAValue

from gimlet.dialects.shapes import DYN, shape_of
from gimlet.dtypes import numpy_dtype
from gimlet.errors import UnsupportedOpError, describe_location, module_path

# Folding a value must not bloat the model: a folded result may hold as many elements
# as its operands together, or this many (a small iota, a causal mask of a short text).
FOLD_ELEMENTS = 4096


def onnx_type(element_type: Attribute) -> int:
    """The TensorProto data type of a gml element type."""
    try:
        return int(helper.np_dtype_to_tensor_dtype(numpy_dtype(element_type)))
    except Exception:
        raise UnsupportedOpError(f"no ONNX type for element type {element_type}") from None


def elt(v: SSAValue) -> Attribute:
    assert isinstance(v.type, TensorType), f"{v} is not a tensor"
    return v.type.element_type


def where(op: Operation) -> str:
    """`h.0.attn (model.py:12)`: the module path and source line, for messages."""
    path, line = module_path(op.location), describe_location(op.location)
    if path and line:
        return f"{path} ({line})"
    return path or line or "an unnamed location"


class Graph:
    """Nodes, initializers and the SSA value -> tensor name map of one ONNX graph."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.origin: dict[str, Operation] = {}  # node name -> the gml op it lowers
        self.initializers: dict[str, TensorProto] = {}
        self.external: set[str] = set()  # initializers written as external data (weights)
        self.names: dict[SSAValue, str] = {}
        self.consts: dict[SSAValue, Any] = {}  # compile-time values: arrays, or ints for sizes
        self.const_hint: dict[SSAValue, str] = {}  # names for initializers from weights
        self._used: set[str] = set()
        self._small: dict[tuple[int, tuple[int, ...], bytes], str] = {}
        self.op: Operation | None = None  # the gml op being lowered (node origins)
        # a converter's note to a later op's (a flattened linear layer: matmul -> reshape)
        self.notes: dict[SSAValue, Any] = {}

    # -- names

    def fresh(self, hint: str) -> str:
        base = "".join(c if c.isalnum() or c in "._/" else "_" for c in hint) or "t"
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._used.add(name)

    # -- values

    def bind(self, v: SSAValue, name: str) -> None:
        self.names[v] = name

    def bind_const(self, v: SSAValue, value: Any, hint: str | None = None) -> None:
        self.consts[v] = value
        if hint is not None:
            self.const_hint[v] = hint

    def const_of(self, v: SSAValue) -> Any:
        """The compile-time value of `v`, or None."""
        return self.consts.get(v)

    def has(self, v: SSAValue) -> bool:
        return v in self.names or v in self.consts

    def name(self, v: SSAValue) -> str:
        """The tensor holding `v` (a known value becomes an initializer on first use)."""
        if v in self.names:
            return self.names[v]
        if v not in self.consts:
            raise AssertionError(f"value {v.name_hint or v} used before it is lowered")
        value = self.consts[v]
        if isinstance(v.type, IndexType):
            name = self.ints([int(value)])
        else:
            hint = self.const_hint.get(v)
            array = np.asarray(value, dtype=numpy_dtype(elt(v)))
            name = self.weight(array, hint) if hint else self.array(array)
        self.names[v] = name
        return name

    def index(self, v: SSAValue) -> str:
        """An `index` value as a [1] int64 tensor."""
        assert isinstance(v.type, IndexType)
        return self.name(v)

    # -- initializers

    def weight(self, array: np.ndarray, hint: str) -> str:
        """A weight (or one folded from weights): stored as external data."""
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(np.require(array, requirements="C"), name)
        self.external.add(name)
        return name

    def array(self, array: np.ndarray, hint: str = "c") -> str:
        """A literal; small ones (scalars, shapes) are shared and stay in the model."""
        array = np.require(array, requirements="C")
        if array.size > 64:
            return self.weight(array, hint)
        key = (int(helper.np_dtype_to_tensor_dtype(array.dtype)), array.shape, array.tobytes())
        if key not in self._small:
            name = self.fresh(hint)
            self.initializers[name] = numpy_helper.from_array(array, name)
            self._small[key] = name
        return self._small[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.array(np.asarray(list(values), dtype=np.int64), "i")

    def scalar(
        self, value: float | bool, element_type: Attribute, shape: tuple[int, ...] = ()
    ) -> str:
        """A 0-d (or `shape`d) literal of a gml element type."""
        dtype = numpy_dtype(element_type)
        if dtype.kind in "iub" and not isinstance(value, bool):
            value = int(value)
        return self.array(np.full(shape, value).astype(dtype), "s")

    # -- nodes

    def node(
        self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs: Any
    ) -> list[str]:
        """Append a node; returns its output names (fresh unless given)."""
        hint = (self.op.results[0].name_hint if self.op and self.op.results else None) or "v"
        if isinstance(outputs, int):
            outputs = [self.fresh(hint) for _ in range(outputs)]
        path = module_path(self.op.location) if self.op else None
        name = self.fresh(f"{path or 'gimlet'}/{op_type}")
        doc = f"{self.op.name} at {where(self.op)}" if self.op else ""
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), list(outputs), name=name, doc_string=doc, **attrs
            )
        )
        if self.op is not None:
            self.origin[name] = self.op
        return list(outputs)

    def one(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.node(op_type, inputs, 1, **attrs)[0]

    # -- shapes

    def dim(self, x: str, axis: int) -> str:
        """dim `axis` of tensor `x` as a [1] int64 tensor."""
        return self.one("Shape", [x], start=axis, end=axis + 1)

    def shape(self, dims: Sequence[int | str]) -> str:
        """A shape tensor from static sizes and [1] int64 tensors."""
        if all(isinstance(d, int) for d in dims):
            return self.ints([int(d) for d in dims])  # type: ignore[arg-type]
        pieces: list[str] = []
        run: list[int] = []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                pieces.append(self.ints(run))
                run = []
            pieces.append(d)
        if run:
            pieces.append(self.ints(run))
        return self.one("Concat", pieces, axis=0) if len(pieces) > 1 else pieces[0]

    def result_dims(self, op: Operation, sizes: Sequence[SSAValue]) -> list[int | str]:
        """The result shape of a sized op: static dims, then its `index` operands in order."""
        it = iter(sizes)
        return [self.size(next(it)) if d == DYN else d for d in shape_of(op.results[0].type)]

    def size(self, v: SSAValue) -> int | str:
        known = self.const_of(v)
        return int(known) if known is not None else self.index(v)

    def refuse(self, op: Operation, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{op.name} at {where(op)}: {why}")


def numel(shape: Sequence[int]) -> int | None:
    return None if DYN in shape else math.prod(shape)
