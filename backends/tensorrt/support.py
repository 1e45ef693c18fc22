"""What TensorRT runs: its ONNX operator matrix, and what that means for gml ops.

Source: the ONNX-TensorRT parser's operator support matrix, `docs/operators.md` of
github.com/onnx/onnx-tensorrt at commit 96e7811 (the "ONNX-TensorRT 10.1 GA release"; the
page says TensorRT 10.0 parses opsets 9 to 20; gimlet emits opset 20). `MATRIX` holds its rows for the ONNX ops
gimlet's lowering emits: the element types each takes, and the restrictions that matter
to gimlet. INT8/FP8 are quantized types there (not data types gimlet computes in), UINT8
is for network inputs/outputs only, and DOUBLE is cast down to FLOAT, so f64, i8, u8 and
i16 tensors stay off TensorRT.

Two uses, kept in agreement by tests/test_tensorrt.py:
* `refusals(model)` checks a lowered ONNX model node by node (element types from shape
  inference) before a bundle is written: a part TensorRT cannot build is reported with the
  gml op and source line that produced the node.
* `GML_DTYPES` says, per gml op, the element types TensorRT runs it in once lowered:
  placement reads it (compiler/placement/backend_ops.py is generated from it by
  `python -m gimlet.backends.tensorrt.docs`), so with `--backend nvidia=tensorrt` an op
  TensorRT cannot run is placed on another device, or reported where it is pinned.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from onnx import TensorProto, helper
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue

from gimlet.dialects import gml

from .graph import where

TENSORRT_VERSION = "10.1"
SOURCE = "onnx-tensorrt docs/operators.md @ 96e7811 (ONNX-TensorRT 10.1 GA)"

_F = frozenset({"FP32", "FP16", "BF16"})
_FI = _F | {"INT32", "INT64"}
_FIB = _FI | {"BOOL"}
_B = frozenset({"BOOL"})

# ONNX op -> element types TensorRT takes (the matrix's "Supported Types" column)
MATRIX: dict[str, frozenset[str]] = {
    "Abs": _FI,
    "Add": _FI,
    "And": _B,
    "ArgMax": _FI,
    "ArgMin": _FI,
    "AveragePool": _F,
    "BatchNormalization": _F,
    "Cast": _FIB | {"UINT8"},
    "Clip": _F,
    "Concat": _FIB,
    "ConstantOfShape": _FIB,
    "Conv": _F,
    "Cos": _F,
    "CumSum": _F,
    "Div": _FI,
    "Equal": _FI,
    "Erf": _F,
    "Exp": _F,
    "Expand": _FIB,
    "Gather": _FIB,
    "GatherElements": _FIB,
    "GatherND": _FIB,
    "Gelu": _F | {"INT32", "INT64"},
    "Gemm": _F,
    "GlobalAveragePool": _F,
    "Greater": _FI,
    "GreaterOrEqual": _FI,
    "Identity": _FIB,
    "LayerNormalization": _F,
    "Less": _FI,
    "LessOrEqual": _FI,
    "Log": _F,
    "LogSoftmax": _F,
    "MatMul": _F,
    "Max": _FI,
    "MaxPool": _F,
    "Min": _FI,
    "Mod": _FI,
    "Mul": _FI,
    "Neg": _FI,
    "Not": _B,
    "Or": _B,
    "Pad": _FI,
    "Pow": _F,
    "Range": _FI,
    "Reciprocal": _F,
    "ReduceMax": _FI,
    "ReduceMean": _FI,
    "ReduceMin": _FI,
    "ReduceProd": _FI,
    "ReduceSum": _FI,
    "Relu": _FI,
    "Reshape": _FIB,
    "Shape": _FIB,
    "Sigmoid": _F,
    "Sin": _F,
    "Slice": _FIB,
    "Softmax": _F,
    "Sqrt": _F,
    "Sub": _FI,
    "Tanh": _F,
    "Transpose": _FIB,
    "Unsqueeze": _FIB,
    "Where": _FIB,
    "Xor": _B,
}

# restrictions of the matrix that gimlet's lowering can hit, and how it stays within them
RESTRICTIONS: dict[str, str] = {
    "AveragePool": "2-d/3-d only; `dilations` empty or all ones (gml.avg_pool2d has none)",
    "MaxPool": "2-d/3-d only; `dilations` empty or all ones (a dilated gml.max_pool2d is refused)",
    "CumSum": "`axis` must be an initializer (it is)",
    "Pad": "`axes` must be an initializer (gimlet passes none)",
    "ReduceMax": "`axes` must be an initializer (they are)",
    "ReduceMean": "`axes` must be an initializer (they are)",
    "ReduceMin": "`axes` must be an initializer (they are)",
    "ReduceProd": "`axes` must be an initializer (gimlet passes none)",
    "ReduceSum": "`axes` must be an initializer (they are)",
    "Slice": "`axes` must be an initializer (they are)",
    "Unsqueeze": "`axes` must be a constant (they are)",
    "LayerNormalization": "only the first output (the only one gimlet uses)",
}

_TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.INT64: "INT64",
    TensorProto.INT32: "INT32",
    TensorProto.INT16: "INT16",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
}

# which input carries the data type the matrix means (others are shapes, axes, indices)
_DATA_INPUT = {"Where": 1}


def _type_name(t: int) -> str:
    return _TYPE_NAMES.get(t, helper.tensor_dtype_to_string(t))


def node_refusal(node: onnx.NodeProto, types: Mapping[str, int]) -> str | None:
    """Why TensorRT cannot run `node` (None if it can); `types` from shape inference."""
    allowed = MATRIX.get(node.op_type)
    if allowed is None:
        return f"TensorRT {TENSORRT_VERSION} has no ONNX {node.op_type}"
    checked: list[int] = []
    if node.op_type == "ConstantOfShape":
        checked = [types[node.output[0]]] if node.output[0] in types else []
    else:
        i = _DATA_INPUT.get(node.op_type, 0)
        if i < len(node.input) and node.input[i] in types:
            checked = [types[node.input[i]]]
    if node.op_type == "Cast":
        checked.append(next(a.i for a in node.attribute if a.name == "to"))
    for t in checked:
        if _type_name(t) not in allowed:
            return f"TensorRT {TENSORRT_VERSION} runs ONNX {node.op_type} on {', '.join(sorted(allowed))}, not {_type_name(t)}"
    if node.op_type in ("MaxPool", "AveragePool"):
        dil = next((list(a.ints) for a in node.attribute if a.name == "dilations"), [])
        if any(d != 1 for d in dil):
            return f"TensorRT {TENSORRT_VERSION} pools without dilation only ({node.op_type})"
    return None


def refusals(inferred: onnx.ModelProto, origin: Mapping[str, Operation]) -> list[str]:
    """One line per gml op whose ONNX nodes TensorRT cannot run, naming its source line."""
    from .lower import element_types

    types = element_types(inferred)
    out: dict[Operation | str, str] = {}
    for node in inferred.graph.node:
        why = node_refusal(node, types)
        if why is None:
            continue
        op = origin.get(node.name)
        key: Operation | str = op if op is not None else node.name
        if key not in out:
            at = f"{op.name} at {where(op)}" if op is not None else f"node {node.name}"
            out[key] = f"{at}: {why} ({SOURCE})"
    return list(out.values())


# ------------------------------------------------------------------ gml ops

FLOATS = frozenset({"f32", "f16", "bf16"})
INTS = frozenset({"i32", "i64"})
ANY = FLOATS | INTS | {"i1"}

# Per gml op, the element types TensorRT runs its lowering in. The type an op is keyed
# by (`key_dtypes`) is its result's, except for the ops in KEYED_BY_OPERAND, whose result
# type says nothing about the work (comparisons give i1, arg-reductions i64), and casts,
# keyed by both ends.
GML_DTYPES: dict[str, frozenset[str]] = {
    # sources and size arithmetic (Shape, ConstantOfShape, Range)
    "gml.dim": ANY,
    "gml.full": ANY,
    "gml.arange": FLOATS | INTS,
    # elementwise
    **{f"gml.{n}": FLOATS | INTS for n in ("neg", "abs", "relu", "sub", "div")},
    **{f"gml.{n}": ANY for n in ("add", "mul", "maximum", "minimum")},
    **{
        f"gml.{n}": FLOATS
        for n in (
            "exp",
            "log",
            "sqrt",
            "rsqrt",
            "tanh",
            "sigmoid",
            "sin",
            "cos",
            "erf",
            "reciprocal",
            "silu",
            "gelu",
            "clamp",
            "pow",
        )
    },  # fmt: skip
    "gml.not": frozenset({"i1"}),
    "gml.and": frozenset({"i1"}),
    "gml.or": frozenset({"i1"}),
    **{f"gml.{n}": ANY for n in ("eq", "ne", "lt", "le", "gt", "ge")},
    "gml.where": ANY,
    "gml.cast": FLOATS | INTS | {"i1"},
    # shapes and indexing
    **{f"gml.{n}": ANY for n in ("reshape", "expand", "permute", "slice", "concat")},
    "gml.pad": FLOATS | INTS,
    "gml.embedding": ANY,
    "gml.gather": ANY,
    "gml.index": ANY,
    "gml.cumsum": ANY,  # integers as an exact masked sum (TensorRT's CumSum is float-only)
    # reductions
    **{f"gml.{n}": FLOATS | INTS for n in ("sum", "mean", "amax", "amin", "argmax", "argmin")},
    "gml.any": ANY,
    "gml.var": FLOATS,
    # nn
    **{
        f"gml.{n}": FLOATS
        for n in (
            "matmul",
            "softmax",
            "log_softmax",
            "layer_norm",
            "sdpa",
            "conv",
            "batch_norm",
            "max_pool2d",
            "avg_pool2d",
            "adaptive_avg_pool2d",
        )
    },  # fmt: skip
}

KEYED_BY_OPERAND = frozenset(
    {
        *(f"gml.{n}" for n in ("eq", "ne", "lt", "le", "gt", "ge")),
        *("gml.any", "gml.argmax", "gml.argmin", "gml.dim"),
    }
)
KEYED_BY_BOTH = frozenset({"gml.cast"})  # both ends of a conversion must be TensorRT types


def dtype_name(t: object) -> str:
    from gimlet.dtypes import numpy_dtype

    names = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64"}
    np_name = numpy_dtype(t).name  # type: ignore[arg-type]
    if np_name in names:
        return names[np_name]
    if np_name == "bool":
        return "i1"
    return np_name.replace("uint", "ui").replace("int", "i")


def _first(values: list[SSAValue]) -> list[str]:
    for v in values:
        if isinstance(v.type, TensorType):
            return [dtype_name(v.type.element_type)]
    return []


def key_dtypes(op: Operation) -> list[str]:
    """The element types `GML_DTYPES` is consulted with for `op`: its result's, its first
    operand's (KEYED_BY_OPERAND) or both (KEYED_BY_BOTH); none when it has no tensor."""
    if op.name in KEYED_BY_OPERAND:
        return _first(list(op.operands))
    if op.name in KEYED_BY_BOTH:
        return _first(list(op.operands)) + _first(list(op.results))
    return _first(list(op.results))


def gml_supported(op: Operation) -> bool:
    """Whether TensorRT runs `op` by the table (what placement reads); `attribute_limit`
    adds what depends on an op's attributes, which placement does not see."""
    allowed = GML_DTYPES.get(op.name)
    return allowed is not None and all(d in allowed for d in key_dtypes(op))


def attribute_limit(op: Operation) -> str | None:
    """The matrix's restrictions that hang on attributes: refused when the bundle is
    written (the segment then runs on the interpreter, with this note)."""
    if isinstance(op, gml.MaxPool2dOp) and op.window_dilation() != (1, 1):
        return "a dilated max pooling (TensorRT pools without dilation)"
    return None


__all__ = [
    "GML_DTYPES",
    "KEYED_BY_BOTH",
    "KEYED_BY_OPERAND",
    "MATRIX",
    "SOURCE",
    "TENSORRT_VERSION",
    "attribute_limit",
    "gml_supported",
    "key_dtypes",
    "node_refusal",
    "refusals",
]
