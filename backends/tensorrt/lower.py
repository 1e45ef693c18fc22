"""gml -> ONNX: one `func.func` (a compiled part of a segment, backends/cpu/segments.py's
`part_function`) becomes one ONNX model, opset 20, weights as initializers.

Inputs are `in0, in1, ...` and outputs `out0, out1, ...` in the function's order; an
`index` crosses the boundary as a *carrier*, an empty-valued bool tensor whose length is
the size (the ABI the other backends use), so TensorRT sees it as a dynamic dim with an
optimization profile rather than a shape tensor. `save` writes the model with its weights
as external data in one file beside it; `verify` runs the ONNX checker and shape
inference and compares the inferred output shapes with the gml types.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.external_data_helper import set_external_data
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import IndexType, IntegerAttr, TensorType
from xdsl.ir import Operation

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.dtypes import numpy_dtype
from gimlet.errors import UnsupportedOpError, UserError
from gimlet.interpreter import evaluate_op

from .graph import FOLD_ELEMENTS, Graph, numel, onnx_type, where
from .ops import CONVERTERS

# Opset 20: the newest TensorRT 10's ONNX parser takes (9 to 20), with Gelu as one op;
# LayerNormalization (17) and axes as inputs (18) come with it.
OPSET = 20
IR_VERSION = 9  # the IR version of opset 20 (ONNX 1.15): older parsers refuse newer IRs


@dataclass(frozen=True)
class Port:
    """A model input or output: `shape` has -1 for a dynamic dim; a carrier is an `index`."""

    name: str
    dtype: str  # numpy's name: float32, bfloat16, int64, bool, ...
    shape: tuple[int, ...]
    carrier: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "carrier": self.carrier,
        }


@dataclass
class OnnxPart:
    """A lowered function: the model (weights inline), its ports, and per node the gml op
    it came from (for messages that name the user's source line)."""

    model: onnx.ModelProto
    inputs: list[Port]
    outputs: list[Port]
    external: frozenset[str]  # initializers saved as external data
    origin: dict[str, Operation] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model.SerializeToString(deterministic=True)).hexdigest()

    def op_types(self) -> list[str]:
        return [n.op_type for n in self.model.graph.node]

    def save(self, path: str | os.PathLike[str]) -> tuple[str, str]:
        """Write `path` (.onnx) and its weights beside it (`<stem>.data`); returns both
        file names. The data file is replaced, never appended to."""
        path = Path(path)
        data = path.with_suffix(".data")
        if data.exists():
            data.unlink()
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for tensor in model.graph.initializer:
            if tensor.name in self.external:
                set_external_data(tensor, location=data.name)
        onnx.save_model(model, str(path))
        if not self.external:  # keep the pair: an empty data file says "no weights"
            data.write_bytes(b"")
        data.chmod(0o644)  # onnx creates it private; the bundle's files are readable
        return path.name, data.name


def _port(name: str, t: Any) -> Port:
    if isinstance(t, IndexType):
        return Port(name, "bool", (-1,), carrier=True)
    assert isinstance(t, TensorType)
    shape = tuple(-1 if d == DYN else int(d) for d in shape_of(t))
    return Port(name, numpy_dtype(t.element_type).name, shape)


def _value_info(port: Port, t: Any, symbolic: bool) -> onnx.ValueInfoProto:
    if isinstance(t, IndexType):
        return helper.make_tensor_value_info(port.name, onnx.TensorProto.BOOL, [f"{port.name}_len"])
    dims: list[Any] = [
        (f"{port.name}_d{i}" if symbolic else None) if d == -1 else d
        for i, d in enumerate(port.shape)
    ]
    return helper.make_tensor_value_info(port.name, onnx_type(t.element_type), dims)


def lower(fn: func.FuncOp, weights: Mapping[str, np.ndarray], name: str | None = None) -> OnnxPart:
    """`fn` as an ONNX model; UnsupportedOpError names each op that has no lowering."""
    g = Graph(weights)
    block = fn.body.block
    inputs: list[Port] = []
    infos: list[onnx.ValueInfoProto] = []
    for i, arg in enumerate(block.args):
        if not isinstance(arg.type, TensorType):
            raise UnsupportedOpError(f"an ONNX model input of type {arg.type}")
        port = _port(f"in{i}", arg.type)
        g.reserve(port.name)
        g.bind(arg, port.name)
        inputs.append(port)
        infos.append(_value_info(port, arg.type, symbolic=True))
    problems: list[str] = []
    ret: func.ReturnOp | None = None
    for op in block.ops:
        if isinstance(op, func.ReturnOp):
            ret = op
            break
        try:
            _lower_op(g, op)
        except UnsupportedOpError as e:
            problems.append(str(e))
            for r in op.results:  # keep going to report every op, not just the first
                g.bind(r, g.fresh("unlowered"))
    if problems:
        raise UnsupportedOpError("\n".join(["cannot lower to ONNX:", *problems]))
    assert ret is not None, "a function without func.return"
    outputs, out_infos = _outputs(g, ret)
    used = {i for n in g.nodes for i in n.input}  # a literal made for a path not taken
    graph = helper.make_graph(
        g.nodes,
        name or fn.sym_name.data,
        infos,
        out_infos,
        initializer=[t for name, t in g.initializers.items() if name in used],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="gimlet",
        ir_version=IR_VERSION,
    )
    return OnnxPart(model, inputs, outputs, frozenset(g.external & used), dict(g.origin))


def _outputs(g: Graph, ret: func.ReturnOp) -> tuple[list[Port], list[onnx.ValueInfoProto]]:
    """Name each returned tensor `out<j>`: the node producing it is renamed, unless it is an
    input, a weight or returned twice (then an Identity copies it)."""
    produced = {o for n in g.nodes for o in n.output}
    rename: dict[str, str] = {}
    ports, infos = [], []
    for j, v in enumerate(ret.arguments):
        out = f"out{j}"
        g.reserve(out)
        src = g.name(v)
        if src in produced and src not in rename:
            rename[src] = out
        else:
            g.op = None
            g.node("Identity", [rename.get(src, src)], [out])
        t = v.type
        if isinstance(t, IndexType):
            raise UnsupportedOpError("an ONNX model returning an index (a carrier is expected)")
        port = _port(out, t)
        ports.append(port)
        infos.append(_value_info(port, t, symbolic=False))
    for node in g.nodes:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    return ports, infos


def _lower_op(g: Graph, op: Operation) -> None:
    if op.results and all(g.has(r) for r in op.results):
        return  # lowered together with a neighbour (a bias add folded into Gemm)
    if isinstance(op, gml.ParamOp):
        name = op.param_name.data
        if name not in g.weights:
            raise UserError(f'missing weight "{name}" for {op.name} at {where(op)}')
        g.bind_const(op.result, np.asarray(g.weights[name]), hint=name)
        return
    if isinstance(op, arith.ConstantOp):
        assert isinstance(op.value, IntegerAttr)
        g.bind_const(op.result, int(op.value.value.data))
        return
    if isinstance(op, gml.FusionOp):
        term = op.body.block.last_op
        assert isinstance(term, gml.YieldOp)
        for inner in op.body.block.ops:
            if inner is not term:
                _lower_op(g, inner)
        for r, v in zip(op.outputs, term.values, strict=True):
            if v in g.names:
                g.bind(r, g.names[v])
            else:
                g.bind_const(r, g.consts[v], g.const_hint.get(v))
        return
    if _foldable(g, op):
        try:
            values = evaluate_op(op, [g.const_of(v) for v in op.operands])
        except UserError:  # the interpreter cannot evaluate it alone: lower it instead
            values = None
        if values is not None:
            hint = next((g.const_hint[v] for v in op.operands if v in g.const_hint), None)
            for res, value in zip(op.results, values, strict=True):
                g.bind_const(res, value, f"{hint}.{op.name[4:]}" if hint else None)
            return
    convert = CONVERTERS.get(type(op))
    if convert is None:
        raise UnsupportedOpError(f"{op.name} at {where(op)}: no ONNX lowering")
    g.op = op
    names = convert(g, op)
    g.op = None
    for res, n in zip(op.results, names, strict=True):
        if res not in g.names:
            g.bind(res, n)


def _foldable(g: Graph, op: Operation) -> bool:
    """All operands known at compile time, and a result no bigger than they are (or small)."""
    if op.regions or not all(g.const_of(v) is not None for v in op.operands):
        return False
    budget = max(
        FOLD_ELEMENTS,
        sum(np.asarray(g.const_of(v)).size for v in op.operands if isinstance(v.type, TensorType)),
    )
    for r in op.results:
        if isinstance(r.type, IndexType):
            continue
        n = numel(shape_of(r.type)) if isinstance(r.type, TensorType) else None
        if n is None or n > budget:
            return False
    return True


# ------------------------------------------------------------------ checks


def verify(part: OnnxPart) -> onnx.ModelProto:
    """The ONNX checker (full check: it also runs strict shape inference) and shape
    inference with data propagation; the inferred output shapes must agree with the gml
    result types. Returns the model with inferred value_info."""
    onnx.checker.check_model(part.model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(
        part.model, check_type=True, strict_mode=True, data_prop=True
    )
    for port, info in zip(part.outputs, inferred.graph.output, strict=True):
        dims = info.type.tensor_type.shape.dim
        if len(dims) != len(port.shape):
            raise AssertionError(
                f"{port.name}: inferred rank {len(dims)}, gml says {len(port.shape)}"
            )
        for i, (d, want) in enumerate(zip(dims, port.shape, strict=True)):
            if want != -1 and d.HasField("dim_value") and d.dim_value != want:
                raise AssertionError(
                    f"{port.name} dim {i}: inferred {d.dim_value}, gml says {want}"
                )
    return inferred


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor name's ONNX element type (inputs, outputs, value_info, initializers)."""
    g = model.graph
    out = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        out[vi.name] = vi.type.tensor_type.elem_type
    return out


__all__ = ["IR_VERSION", "OPSET", "OnnxPart", "Port", "element_types", "lower", "verify"]
