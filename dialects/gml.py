"""The `gml` dialect: typed tensor ops mirroring the core ATen set gimlet imports.

Every op is value-semantic (no aliasing, no mutation). Ops that can derive their
result type from their operands implement `infer()`; the verifier checks the
declared type against it and the `infer-shapes` pass uses it to refine `?` dims.
Ops whose result shape is data the op carries (reshape, expand, full, ...) take
one `index` operand per dynamic result dim, as MLIR's `tensor.empty` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, cast

from xdsl.dialects.builtin import (
    I64,
    BFloat16Type,
    BoolAttr,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IndexType,
    IntegerAttr,
    IntegerType,
    StringAttr,
    TensorType,
    f64,
    i1,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, Region, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    VarConstraint,
    base,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.traits import HasParent, IsolatedFromAbove, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

from gimlet.dialects.shapes import (
    DYN,
    broadcast,
    check_result,
    fmt,
    normalize_dim,
    shape_of,
    tensor,
)

AnyTensor = base(TensorType)
IntArray = DenseArrayBase.constr(i64)


def _ints(attr: DenseArrayBase) -> tuple[int, ...]:
    return tuple(int(v) for v in cast(DenseArrayBase[IntegerType], attr).get_values())


def dense(type: TensorType, values: Sequence[float] | Sequence[int]) -> DenseIntOrFPElementsAttr:
    """A dense literal of `type` (the element type decides int vs float storage)."""
    return DenseIntOrFPElementsAttr.from_list(cast(Any, type), list(values))


def ints_attr(values: Sequence[int]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, list(values))


def int_attr(v: int) -> IntegerAttr:
    return IntegerAttr(v, i64)


def float_attr(v: float) -> FloatAttr:
    return FloatAttr(v, f64)


def _elt(v: SSAValue) -> Attribute:
    assert isinstance(v.type, TensorType)
    return v.type.element_type


class GmlOp(IRDLOperation):
    """Base of gml ops: a verifier driven by `infer()`."""

    def infer(self) -> TensorType | None:
        """The result type implied by operands and properties, or None."""
        return None

    def verify_(self) -> None:
        inferred = self.infer()
        if inferred is not None:
            check_result(self.results[0].type, inferred)


# ---------------------------------------------------------------- sources ---


@irdl_op_definition
class ParamOp(GmlOp):
    """A named weight, buffer or lifted constant; its data lives beside the IR."""

    name = "gml.param"
    param_name = prop_def(StringAttr, prop_name="name")
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$name attr-dict `:` type($result)"

    def __init__(self, name: str, type: TensorType):
        super().__init__(properties={"name": StringAttr(name)}, result_types=[type])

    def verify_(self) -> None:
        if DYN in shape_of(self.result.type):
            raise VerifyException("a parameter must have a static shape")


@irdl_op_definition
class ConstantOp(GmlOp):
    """A small literal tensor, printed inline (scalars, folded constants)."""

    name = "gml.constant"
    value = prop_def(DenseIntOrFPElementsAttr)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())

    def __init__(self, value: DenseIntOrFPElementsAttr):
        super().__init__(properties={"value": value}, result_types=[value.type])

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_attribute(self.value)  # prints `dense<...> : tensor<...>`
        printer.print_op_attributes(self.attributes)

    @classmethod
    def parse(cls, parser: Parser) -> ConstantOp:
        value = parser.parse_attribute()
        if not isinstance(value, DenseIntOrFPElementsAttr):
            parser.raise_error("gml.constant expects a dense<...> : tensor<...> literal")
        op = cls(value)
        op.attributes.update(parser.parse_optional_attr_dict())
        return op

    def verify_(self) -> None:
        if self.value.type != self.result.type:
            raise VerifyException("constant value type must equal the result type")


@irdl_op_definition
class DimOp(GmlOp):
    """The run-time size of one dimension, as an `index`."""

    name = "gml.dim"
    input = operand_def(AnyTensor)
    index = prop_def(IntegerAttr[I64])
    result = result_def(IndexType)
    traits = traits_def(Pure())
    assembly_format = "$input `[` $index `]` attr-dict `:` type($input)"

    def __init__(self, input: SSAValue, index: int):
        super().__init__(
            operands=[input], properties={"index": int_attr(index)}, result_types=[IndexType()]
        )

    def verify_(self) -> None:
        rank = len(shape_of(self.input.type))
        if not 0 <= self.index.value.data < rank:
            raise VerifyException(f"dim index {self.index.value.data} out of range for rank {rank}")


class SizedOp(GmlOp):
    """An op whose result shape is its result type, `?` dims given as operands."""

    def dynamic_sizes(self) -> list[SSAValue]:
        """The `index` operands (each subclass declares them after its tensors)."""
        return [v for v in self.operands if isinstance(v.type, IndexType)]

    def verify_(self) -> None:
        n_dyn = shape_of(self.results[0].type).count(DYN)
        if len(self.dynamic_sizes()) != n_dyn:
            raise VerifyException(
                f"expected {n_dyn} dynamic size operand(s) for result shape "
                f"{fmt(shape_of(self.results[0].type))}, got {len(self.dynamic_sizes())}"
            )
        super().verify_()


@irdl_op_definition
class FullOp(SizedOp):
    """A tensor filled with one value (aten.full, full_like, zeros, ones)."""

    name = "gml.full"
    sizes = var_operand_def(IndexType)
    value = prop_def(FloatAttr[Float64Type])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$value (`dims` `(` $sizes^ `)`)? attr-dict `:` type($result)"

    def __init__(self, value: float, type: TensorType, sizes: Sequence[SSAValue] = ()):
        super().__init__(
            operands=[list(sizes)], properties={"value": float_attr(value)}, result_types=[type]
        )


@irdl_op_definition
class ArangeOp(SizedOp):
    """`start, start+step, ...` filling a rank-1 result."""

    name = "gml.arange"
    sizes = var_operand_def(IndexType)
    start = prop_def(FloatAttr[Float64Type])
    step = prop_def(FloatAttr[Float64Type])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$start `step` $step (`dims` `(` $sizes^ `)`)? attr-dict `:` type($result)"

    def __init__(self, start: float, step: float, type: TensorType, sizes: Sequence[SSAValue] = ()):
        super().__init__(
            operands=[list(sizes)],
            properties={"start": float_attr(start), "step": float_attr(step)},
            result_types=[type],
        )

    def verify_(self) -> None:
        if len(shape_of(self.result.type)) != 1:
            raise VerifyException("result must be rank 1")
        super().verify_()


# ------------------------------------------------------------ elementwise ---


class UnaryOp(GmlOp):
    """Elementwise, result type equal to the operand type."""

    def infer(self) -> TensorType:
        assert isinstance(self.operands[0].type, TensorType)
        return self.operands[0].type

    T: ClassVar = VarConstraint("T", AnyTensor)
    input = operand_def(T)
    result = result_def(T)
    traits = traits_def(Pure())
    assembly_format = "$input attr-dict `:` type($input)"

    def __init__(self, input: SSAValue, attributes: dict[str, Attribute] | None = None):
        super().__init__(operands=[input], result_types=[input.type], properties=attributes or {})


def _unary(op_name: str, doc: str) -> type[UnaryOp]:
    cls = type(op_name.split(".")[1].title().replace("_", "") + "Op", (UnaryOp,), {"name": op_name})
    cls.__doc__ = doc
    return irdl_op_definition(cls)


NegOp = _unary("gml.neg", "-x")
ExpOp = _unary("gml.exp", "e**x")
LogOp = _unary("gml.log", "natural log")
SqrtOp = _unary("gml.sqrt", "square root")
RsqrtOp = _unary("gml.rsqrt", "1/sqrt(x)")
AbsOp = _unary("gml.abs", "absolute value")
TanhOp = _unary("gml.tanh", "hyperbolic tangent")
SigmoidOp = _unary("gml.sigmoid", "1/(1+e**-x)")
ReluOp = _unary("gml.relu", "max(x, 0)")
SinOp = _unary("gml.sin", "sine")
CosOp = _unary("gml.cos", "cosine")
ErfOp = _unary("gml.erf", "error function")
ReciprocalOp = _unary("gml.reciprocal", "1/x")
NotOp = _unary("gml.not", "logical not (i1)")
SiluOp = _unary("gml.silu", "x*sigmoid(x)")


@irdl_op_definition
class GeluOp(UnaryOp):
    """GELU; `approximate` is "none" (erf) or "tanh"."""

    name = "gml.gelu"
    approximate = prop_def(StringAttr, default_value=StringAttr("none"))
    assembly_format = "$input (`approximate` $approximate^)? attr-dict `:` type($input)"

    def verify_(self) -> None:
        if self.approximate.data not in ("none", "tanh"):
            raise VerifyException(
                f'approximate must be "none" or "tanh", got "{self.approximate.data}"'
            )


@irdl_op_definition
class ClampOp(UnaryOp):
    """min(max(x, min), max); either bound may be absent."""

    name = "gml.clamp"
    min = opt_prop_def(FloatAttr[Float64Type])
    max = opt_prop_def(FloatAttr[Float64Type])
    assembly_format = "$input (`min` $min^)? (`max` $max^)? attr-dict `:` type($input)"

    def verify_(self) -> None:
        if (
            self.min is not None
            and self.max is not None
            and self.min.value.data > self.max.value.data
        ):
            raise VerifyException("min must not exceed max")


class BinaryOp(GmlOp):
    """Elementwise with numpy broadcasting; operands share an element type."""

    lhs = operand_def(AnyTensor)
    rhs = operand_def(AnyTensor)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)"
    IS_COMPARE: ClassVar[bool] = False

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: TensorType | None = None):
        if result_type is None:
            elt = i1 if self.IS_COMPARE else _elt(lhs)
            result_type = tensor(broadcast(shape_of(lhs.type), shape_of(rhs.type)), elt)
        super().__init__(operands=[lhs, rhs], result_types=[result_type])

    def infer(self) -> TensorType:
        if _elt(self.lhs) != _elt(self.rhs):
            raise VerifyException(
                f"operand element types differ: {_elt(self.lhs)} vs {_elt(self.rhs)}"
            )
        shape = broadcast(shape_of(self.lhs.type), shape_of(self.rhs.type))
        return tensor(shape, i1 if self.IS_COMPARE else _elt(self.lhs))


def _binary(op_name: str, doc: str, compare: bool = False) -> type[BinaryOp]:
    cls_name = op_name.split(".")[1].title().replace("_", "") + "Op"
    cls = type(
        cls_name,
        (BinaryOp,),
        {"name": op_name, "IS_COMPARE": compare, "__annotations__": {"IS_COMPARE": ClassVar[bool]}},
    )
    cls.__doc__ = doc
    return irdl_op_definition(cls)


AddOp = _binary("gml.add", "lhs + rhs")
SubOp = _binary("gml.sub", "lhs - rhs")
MulOp = _binary("gml.mul", "lhs * rhs")
DivOp = _binary("gml.div", "lhs / rhs (true division for floats, floor for ints)")
PowOp = _binary("gml.pow", "lhs ** rhs")
MaximumOp = _binary("gml.maximum", "elementwise max")
MinimumOp = _binary("gml.minimum", "elementwise min")
AndOp = _binary("gml.and", "logical/bitwise and")
OrOp = _binary("gml.or", "logical/bitwise or")
EqOp = _binary("gml.eq", "lhs == rhs", compare=True)
NeOp = _binary("gml.ne", "lhs != rhs", compare=True)
LtOp = _binary("gml.lt", "lhs < rhs", compare=True)
LeOp = _binary("gml.le", "lhs <= rhs", compare=True)
GtOp = _binary("gml.gt", "lhs > rhs", compare=True)
GeOp = _binary("gml.ge", "lhs >= rhs", compare=True)


@irdl_op_definition
class WhereOp(GmlOp):
    """cond ? lhs : rhs, broadcasting all three."""

    name = "gml.where"
    cond = operand_def(AnyTensor)
    lhs = operand_def(AnyTensor)
    rhs = operand_def(AnyTensor)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$cond `,` $lhs `,` $rhs attr-dict `:` functional-type(operands, results)"

    def __init__(self, cond: SSAValue, lhs: SSAValue, rhs: SSAValue):
        shape = broadcast(shape_of(cond.type), broadcast(shape_of(lhs.type), shape_of(rhs.type)))
        super().__init__(operands=[cond, lhs, rhs], result_types=[tensor(shape, _elt(lhs))])

    def infer(self) -> TensorType:
        if _elt(self.cond) != i1:
            raise VerifyException("condition must have element type i1")
        if _elt(self.lhs) != _elt(self.rhs):
            raise VerifyException("the two branches must share an element type")
        shape = broadcast(
            shape_of(self.cond.type), broadcast(shape_of(self.lhs.type), shape_of(self.rhs.type))
        )
        return tensor(shape, _elt(self.lhs))


@irdl_op_definition
class CastOp(GmlOp):
    """Element type conversion (aten._to_copy); shape unchanged."""

    name = "gml.cast"
    input = operand_def(AnyTensor)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$input attr-dict `:` type($input) `to` type($result)"

    def __init__(self, input: SSAValue, element_type: Attribute):
        super().__init__(
            operands=[input], result_types=[tensor(shape_of(input.type), element_type)]
        )

    def infer(self) -> TensorType:
        return tensor(shape_of(self.input.type), _elt(self.result))


# ------------------------------------------------------------ shape ops ---


@irdl_op_definition
class ReshapeOp(SizedOp):
    """Same elements, new shape (aten.view, reshape, unsqueeze, squeeze, flatten)."""

    name = "gml.reshape"
    input = operand_def(AnyTensor)
    sizes = var_operand_def(IndexType)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input (`dims` `(` $sizes^ `)`)? attr-dict `:` type($input) `to` type($result)"
    )

    def __init__(self, input: SSAValue, type: TensorType, sizes: Sequence[SSAValue] = ()):
        super().__init__(operands=[input, list(sizes)], result_types=[type])

    def verify_(self) -> None:
        super().verify_()
        if _elt(self.input) != _elt(self.result):
            raise VerifyException("reshape cannot change the element type")
        src, dst = shape_of(self.input.type), shape_of(self.result.type)
        if DYN not in src and DYN not in dst and math.prod(src) != math.prod(dst):
            raise VerifyException(
                f"cannot reshape {fmt(src)} ({math.prod(src)} elements) to "
                f"{fmt(dst)} ({math.prod(dst)} elements)"
            )


@irdl_op_definition
class ExpandOp(SizedOp):
    """Broadcast to the result shape (aten.expand)."""

    name = "gml.expand"
    input = operand_def(AnyTensor)
    sizes = var_operand_def(IndexType)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input (`dims` `(` $sizes^ `)`)? attr-dict `:` type($input) `to` type($result)"
    )

    def __init__(self, input: SSAValue, type: TensorType, sizes: Sequence[SSAValue] = ()):
        super().__init__(operands=[input, list(sizes)], result_types=[type])

    def verify_(self) -> None:
        super().verify_()
        src, dst = shape_of(self.input.type), shape_of(self.result.type)
        if len(src) > len(dst):
            raise VerifyException(f"cannot expand rank {len(src)} to rank {len(dst)}")
        try:
            ok = broadcast(src, dst)
        except VerifyException:
            ok = None
        if (
            ok is None
            or len(ok) != len(dst)
            or any(a != b and DYN not in (a, b) for a, b in zip(ok, dst, strict=True))
        ):
            raise VerifyException(f"cannot expand {fmt(src)} to {fmt(dst)}")


@irdl_op_definition
class PermuteOp(GmlOp):
    """Transpose by a permutation of the dims."""

    name = "gml.permute"
    input = operand_def(AnyTensor)
    dims = prop_def(IntArray)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$input $dims attr-dict `:` type($input) `to` type($result)"

    def __init__(self, input: SSAValue, dims: Sequence[int]):
        src = shape_of(input.type)
        super().__init__(
            operands=[input],
            properties={"dims": ints_attr(dims)},
            result_types=[tensor([src[d] for d in dims], _elt(input))],
        )

    def infer(self) -> TensorType:
        src, dims = shape_of(self.input.type), _ints(self.dims)
        if sorted(dims) != list(range(len(src))):
            raise VerifyException(f"{list(dims)} is not a permutation of rank {len(src)}")
        return tensor([src[d] for d in dims], _elt(self.input))


@irdl_op_definition
class SliceOp(GmlOp):
    """input[..., start:end:step, ...] along `dim`; bounds already clamped."""

    name = "gml.slice"
    input = operand_def(AnyTensor)
    dim = prop_def(IntegerAttr[I64])
    start = prop_def(IntegerAttr[I64])
    end = prop_def(IntegerAttr[I64])
    step = prop_def(IntegerAttr[I64])
    dyn_start = opt_operand_def(IndexType)
    dyn_end = opt_operand_def(IndexType)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    assembly_format = (
        "$input `dim` $dim `start` $start `end` $end `step` $step "
        "(`dyn_start` $dyn_start^)? (`dyn_end` $dyn_end^)? attr-dict `:` type($input) `to` type($result)"
    )

    def __init__(
        self,
        input: SSAValue,
        dim: int,
        start: int,
        end: int,
        step: int,
        type: TensorType,
        dyn_start: SSAValue | None = None,
        dyn_end: SSAValue | None = None,
    ):
        super().__init__(
            operands=[input, [dyn_start] if dyn_start else [], [dyn_end] if dyn_end else []],
            properties={
                "dim": int_attr(dim),
                "start": int_attr(start),
                "end": int_attr(end),
                "step": int_attr(step),
            },
            result_types=[type],
        )

    def infer(self) -> TensorType:
        src = list(shape_of(self.input.type))
        d = normalize_dim(self.dim.value.data, len(src))
        step = self.step.value.data
        if step <= 0:
            raise VerifyException("slice step must be positive")
        if self.dyn_start or self.dyn_end or src[d] == DYN:
            src[d] = DYN
        else:
            start, end = self.start.value.data, self.end.value.data
            src[d] = len(range(*slice(start, end, step).indices(src[d])))
        return tensor(src, _elt(self.input))


@irdl_op_definition
class ConcatOp(GmlOp):
    """Concatenate along `dim`."""

    name = "gml.concat"
    inputs = var_operand_def(AnyTensor)
    dim = prop_def(IntegerAttr[I64])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$inputs `dim` $dim attr-dict `:` functional-type(operands, results)"

    def __init__(self, inputs: Sequence[SSAValue], dim: int, type: TensorType):
        super().__init__(
            operands=[list(inputs)], properties={"dim": int_attr(dim)}, result_types=[type]
        )

    def infer(self) -> TensorType:
        if not self.inputs:
            raise VerifyException("concat needs at least one input")
        shapes = [shape_of(v.type) for v in self.inputs]
        d = normalize_dim(self.dim.value.data, len(shapes[0]))
        out = list(shapes[0])
        for v, s in zip(self.inputs[1:], shapes[1:], strict=True):
            if len(s) != len(out) or _elt(v) != _elt(self.inputs[0]):
                raise VerifyException("concat inputs must share rank and element type")
            for i, (a, b) in enumerate(zip(out, s, strict=True)):
                if i == d:
                    out[i] = DYN if DYN in (a, b) else a + b
                elif a != b and DYN not in (a, b):
                    raise VerifyException(f"concat inputs differ in dim {i}: {a} vs {b}")
        return tensor(out, _elt(self.inputs[0]))


@irdl_op_definition
class PadOp(GmlOp):
    """Constant padding (aten.constant_pad_nd): `low[d]` values before and `high[d]`
    after each dim; a negative amount crops instead."""

    name = "gml.pad"
    input = operand_def(AnyTensor)
    low = prop_def(IntArray)
    high = prop_def(IntArray)
    value = prop_def(FloatAttr[Float64Type])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$input `low` $low `high` $high `value` $value attr-dict `:` type($input) `to` type($result)"

    def __init__(self, input: SSAValue, low: Sequence[int], high: Sequence[int], value: float):
        src = shape_of(input.type)
        out = [DYN if d == DYN else d + lo + hi for d, lo, hi in zip(src, low, high, strict=True)]
        super().__init__(
            operands=[input],
            properties={"low": ints_attr(low), "high": ints_attr(high), "value": float_attr(value)},
            result_types=[tensor(out, _elt(input))],
        )

    def infer(self) -> TensorType:
        src, low, high = shape_of(self.input.type), _ints(self.low), _ints(self.high)
        if not len(low) == len(high) == len(src):
            raise VerifyException(
                f"low and high need one amount per dim ({len(src)}), got {len(low)} and {len(high)}"
            )
        out = []
        for d, (n, lo, hi) in enumerate(zip(src, low, high, strict=True)):
            if n != DYN and n + lo + hi < 0:
                raise VerifyException(
                    f"padding dim {d} of size {n} by {lo}, {hi} leaves {n + lo + hi}"
                )
            out.append(DYN if n == DYN else n + lo + hi)
        return tensor(out, _elt(self.input))


# ------------------------------------------------------------ indexing ---


@irdl_op_definition
class EmbeddingOp(GmlOp):
    """Rows of `weight` picked by integer `indices`."""

    name = "gml.embedding"
    weight = operand_def(AnyTensor)
    indices = operand_def(AnyTensor)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$weight `,` $indices attr-dict `:` functional-type(operands, results)"

    def __init__(self, weight: SSAValue, indices: SSAValue):
        shape = (*shape_of(indices.type), shape_of(weight.type)[-1])
        super().__init__(operands=[weight, indices], result_types=[tensor(shape, _elt(weight))])

    def infer(self) -> TensorType:
        w = shape_of(self.weight.type)
        if len(w) != 2:
            raise VerifyException("embedding weight must be rank 2")
        if not isinstance(_elt(self.indices), IntegerType):
            raise VerifyException("embedding indices must be integers")
        return tensor((*shape_of(self.indices.type), w[1]), _elt(self.weight))


@irdl_op_definition
class GatherOp(GmlOp):
    """out[i][j][k] = input[i][index[i][j][k]][k] for dim=1 (aten.gather)."""

    name = "gml.gather"
    input = operand_def(AnyTensor)
    index = operand_def(AnyTensor)
    dim = prop_def(IntegerAttr[I64])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `,` $index `dim` $dim attr-dict `:` functional-type(operands, results)"
    )

    def __init__(self, input: SSAValue, index: SSAValue, dim: int):
        super().__init__(
            operands=[input, index],
            properties={"dim": int_attr(dim)},
            result_types=[tensor(shape_of(index.type), _elt(input))],
        )

    def infer(self) -> TensorType:
        rank = len(shape_of(self.input.type))
        normalize_dim(self.dim.value.data, rank)
        if not isinstance(_elt(self.index), IntegerType):
            raise VerifyException("gather indices must be integers")
        if len(shape_of(self.index.type)) != rank:
            raise VerifyException("gather index must have the input's rank")
        return tensor(shape_of(self.index.type), _elt(self.input))


@irdl_op_definition
class IndexOp(GmlOp):
    """Advanced indexing (aten.index.Tensor): integer index tensors for the dims in `dims`."""

    name = "gml.index"
    input = operand_def(AnyTensor)
    indices = var_operand_def(AnyTensor)
    dims = prop_def(IntArray)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `[` $indices `]` `dims` $dims attr-dict `:` functional-type(operands, results)"
    )

    def __init__(
        self, input: SSAValue, indices: Sequence[SSAValue], dims: Sequence[int], type: TensorType
    ):
        super().__init__(
            operands=[input, list(indices)],
            properties={"dims": ints_attr(dims)},
            result_types=[type],
        )

    def verify_(self) -> None:
        dims = _ints(self.dims)
        if len(dims) != len(self.indices) or list(dims) != sorted(set(dims)):
            raise VerifyException("dims must be increasing, one per index tensor")
        for v in self.indices:
            if not isinstance(_elt(v), IntegerType):
                raise VerifyException("index tensors must be integers or i1")


@irdl_op_definition
class CumsumOp(GmlOp):
    """Running sum along `dim`."""

    name = "gml.cumsum"
    input = operand_def(AnyTensor)
    dim = prop_def(IntegerAttr[I64])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$input `dim` $dim attr-dict `:` type($input) `to` type($result)"

    def __init__(self, input: SSAValue, dim: int, type: TensorType):
        super().__init__(operands=[input], properties={"dim": int_attr(dim)}, result_types=[type])

    def infer(self) -> TensorType:
        normalize_dim(self.dim.value.data, len(shape_of(self.input.type)))
        # torch accumulates integers and booleans in i64; floats keep their type
        widen = isinstance(_elt(self.input), IntegerType) and _elt(self.result) == i64
        return tensor(shape_of(self.input.type), i64 if widen else _elt(self.input))


# ----------------------------------------------------------- reductions ---


class ReduceOp(GmlOp):
    """Reduce over `dims` (all dims when empty), keeping them as 1 if `keepdim`."""

    input = operand_def(AnyTensor)
    dims = prop_def(IntArray)
    keepdim = prop_def(BoolAttr, default_value=BoolAttr.from_bool(False))
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input $dims (`keepdim` $keepdim^)? attr-dict `:` type($input) `to` type($result)"
    )
    RESULT_IS_BOOL: ClassVar[bool] = False

    def __init__(
        self, input: SSAValue, dims: Sequence[int], keepdim: bool, elt: Attribute | None = None
    ):
        props: dict[str, Attribute] = {
            "dims": ints_attr(dims),
            "keepdim": BoolAttr.from_bool(keepdim),
        }
        src = shape_of(input.type)
        out = self._shape(src, dims, keepdim)
        super().__init__(
            operands=[input],
            properties=props,
            result_types=[tensor(out, elt or (i1 if self.RESULT_IS_BOOL else _elt(input)))],
        )

    @staticmethod
    def _shape(src: tuple[int, ...], dims: Sequence[int], keepdim: bool) -> list[int]:
        red = {normalize_dim(d, len(src)) for d in dims} if dims else set(range(len(src)))
        if keepdim:
            return [1 if i in red else s for i, s in enumerate(src)]
        return [s for i, s in enumerate(src) if i not in red]

    def infer(self) -> TensorType:
        src = shape_of(self.input.type)
        out = self._shape(src, _ints(self.dims), bool(self.keepdim.value.data))
        return tensor(out, i1 if self.RESULT_IS_BOOL else _elt(self.result))


def _reduce(op_name: str, doc: str, boolean: bool = False) -> type[ReduceOp]:
    cls_name = op_name.split(".")[1].title() + "Op"
    cls = type(
        cls_name,
        (ReduceOp,),
        {
            "name": op_name,
            "RESULT_IS_BOOL": boolean,
            "__annotations__": {"RESULT_IS_BOOL": ClassVar[bool]},
        },
    )
    cls.__doc__ = doc
    return irdl_op_definition(cls)


SumOp = _reduce("gml.sum", "sum over dims")
MeanOp = _reduce("gml.mean", "mean over dims")
AmaxOp = _reduce("gml.amax", "max over dims")
AminOp = _reduce("gml.amin", "min over dims")
AnyOp = _reduce("gml.any", "logical or over dims", boolean=True)


@irdl_op_definition
class VarOp(ReduceOp):
    """Variance over dims: sum((x - mean)**2) / (N - correction) (aten.var.correction).

    N is the number of reduced elements; `correction` 1 is Bessel's (unbiased) estimate.
    Where N - correction <= 0 the result is inf or nan, as in torch."""

    name = "gml.var"
    correction = prop_def(FloatAttr[Float64Type], default_value=float_attr(1.0))
    assembly_format = (
        "$input $dims (`keepdim` $keepdim^)? (`correction` $correction^)? attr-dict "
        "`:` type($input) `to` type($result)"
    )

    def __init__(self, input: SSAValue, dims: Sequence[int], keepdim: bool, correction: float):
        super().__init__(input, dims, keepdim)
        self.properties["correction"] = float_attr(correction)

    def infer(self) -> TensorType:
        if not isinstance(_elt(self.input), Float16Type | BFloat16Type | Float32Type | Float64Type):
            raise VerifyException("variance needs a floating-point input")
        return super().infer()


class ArgReduceOp(GmlOp):
    """Index (i64) of the extreme element along `dim`; over all elements, flattened,
    when `dim` is absent. The first one wins ties; NaN counts as the extreme."""

    input = operand_def(AnyTensor)
    dim = opt_prop_def(IntegerAttr[I64])
    keepdim = prop_def(BoolAttr, default_value=BoolAttr.from_bool(False))
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input (`dim` $dim^)? (`keepdim` $keepdim^)? attr-dict `:` type($input) `to` type($result)"
    )

    def __init__(self, input: SSAValue, dim: int | None, keepdim: bool):
        props: dict[str, Attribute] = {"keepdim": BoolAttr.from_bool(keepdim)}
        if dim is not None:
            props["dim"] = int_attr(dim)
        src = shape_of(input.type)
        out = self._shape(src, dim, keepdim)
        super().__init__(operands=[input], properties=props, result_types=[tensor(out, i64)])

    @staticmethod
    def _shape(src: tuple[int, ...], dim: int | None, keepdim: bool) -> list[int]:
        if dim is None:
            return [1] * len(src) if keepdim else []
        d = normalize_dim(dim, len(src))
        if not src:  # a 0-d input: dim 0 or -1 names the scalar itself
            return []
        return [1 if i == d else s for i, s in enumerate(src) if keepdim or i != d]

    def infer(self) -> TensorType:
        if isinstance(_elt(self.input), IntegerType) and _elt(self.input) == i1:
            raise VerifyException("arg-reductions take numbers, not i1")
        dim = self.dim.value.data if self.dim is not None else None
        src = shape_of(self.input.type)
        if dim is not None and src and src[normalize_dim(dim, len(src))] == 0:
            raise VerifyException(f"cannot take the {self.name[4:]} of an empty dim {dim}")
        return tensor(self._shape(src, dim, bool(self.keepdim.value.data)), i64)


@irdl_op_definition
class ArgmaxOp(ArgReduceOp):
    """Index of the maximum along `dim` (aten.argmax)."""

    name = "gml.argmax"


@irdl_op_definition
class ArgminOp(ArgReduceOp):
    """Index of the minimum along `dim` (aten.argmin)."""

    name = "gml.argmin"


# ---------------------------------------------------------------- nn ops ---


@irdl_op_definition
class MatmulOp(GmlOp):
    """Batched matrix product with broadcast batch dims (mm, bmm, matmul)."""

    name = "gml.matmul"
    lhs = operand_def(AnyTensor)
    rhs = operand_def(AnyTensor)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` functional-type(operands, results)"

    def __init__(self, lhs: SSAValue, rhs: SSAValue):
        super().__init__(operands=[lhs, rhs], result_types=[self._infer(lhs, rhs)])

    @staticmethod
    def _infer(lhs: SSAValue, rhs: SSAValue) -> TensorType:
        a, b = shape_of(lhs.type), shape_of(rhs.type)
        if len(a) < 2 or len(b) < 2:
            raise VerifyException("matmul operands must have rank >= 2")
        if _elt(lhs) != _elt(rhs):
            raise VerifyException(f"operand element types differ: {_elt(lhs)} vs {_elt(rhs)}")
        if a[-1] != b[-2] and DYN not in (a[-1], b[-2]):
            raise VerifyException(
                f"contraction dims differ: {fmt(a)} @ {fmt(b)} ({a[-1]} vs {b[-2]})"
            )
        batch = broadcast(a[:-2], b[:-2])
        return tensor((*batch, a[-2], b[-1]), _elt(lhs))

    def infer(self) -> TensorType:
        return self._infer(self.lhs, self.rhs)


class NormalizeLastDimOp(GmlOp):
    T: ClassVar = VarConstraint("T", AnyTensor)
    input = operand_def(T)
    dim = prop_def(IntegerAttr[I64])
    result = result_def(T)
    traits = traits_def(Pure())
    assembly_format = "$input `dim` $dim attr-dict `:` type($input)"

    def __init__(self, input: SSAValue, dim: int):
        super().__init__(
            operands=[input], properties={"dim": int_attr(dim)}, result_types=[input.type]
        )

    def infer(self) -> TensorType:
        normalize_dim(self.dim.value.data, len(shape_of(self.input.type)))
        assert isinstance(self.input.type, TensorType)
        return self.input.type


@irdl_op_definition
class SoftmaxOp(NormalizeLastDimOp):
    """exp(x) / sum(exp(x)) along `dim`."""

    name = "gml.softmax"


@irdl_op_definition
class LogSoftmaxOp(NormalizeLastDimOp):
    """log(softmax(x)) along `dim`."""

    name = "gml.log_softmax"


@irdl_op_definition
class LayerNormOp(GmlOp):
    """Normalize over the last `ndim` dims, then scale and shift (both optional)."""

    name = "gml.layer_norm"
    input = operand_def(AnyTensor)
    weight = opt_operand_def(AnyTensor)
    bias = opt_operand_def(AnyTensor)
    ndim = prop_def(IntegerAttr[I64])
    eps = prop_def(FloatAttr[Float64Type])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    assembly_format = (
        "$input (`weight` $weight^)? (`bias` $bias^)? `ndim` $ndim `eps` $eps attr-dict "
        "`:` type($input) (`weight` type($weight)^)? (`bias` type($bias)^)? `->` type($result)"
    )

    def __init__(
        self, input: SSAValue, weight: SSAValue | None, bias: SSAValue | None, ndim: int, eps: float
    ):
        super().__init__(
            operands=[input, [weight] if weight else [], [bias] if bias else []],
            properties={"ndim": int_attr(ndim), "eps": float_attr(eps)},
            result_types=[input.type],
        )

    def infer(self) -> TensorType:
        src = shape_of(self.input.type)
        n = self.ndim.value.data
        if not 0 < n <= len(src):
            raise VerifyException(f"ndim {n} out of range for rank {len(src)}")
        for v in (self.weight, self.bias):
            if v is not None and _elt(v) != _elt(self.input):
                raise VerifyException("scale/shift element type must match the input's")
            if v is not None and shape_of(v.type) != src[len(src) - n :]:
                raise VerifyException(
                    f"scale/shift shape {fmt(shape_of(v.type))} must equal the normalized "
                    f"shape {fmt(src[len(src) - n :])}"
                )
        assert isinstance(self.input.type, TensorType)
        return self.input.type


@irdl_op_definition
class SdpaOp(GmlOp):
    """softmax(q @ k^T * scale + mask) @ v over [batch..., heads, seq, dim].

    `mask` is boolean (true = attend) or additive; `is_causal` adds the lower-
    triangular mask; `k`/`v` may have fewer heads than `q` (grouped-query).
    """

    name = "gml.sdpa"
    query = operand_def(AnyTensor)
    key = operand_def(AnyTensor)
    value = operand_def(AnyTensor)
    mask = opt_operand_def(AnyTensor)
    is_causal = prop_def(BoolAttr, default_value=BoolAttr.from_bool(False))
    scale = opt_prop_def(FloatAttr[Float64Type])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$query `,` $key `,` $value (`mask` $mask^)? (`causal` $is_causal^)? "
        "(`scale` $scale^)? attr-dict `:` functional-type(operands, results)"
    )

    def __init__(
        self,
        q: SSAValue,
        k: SSAValue,
        v: SSAValue,
        mask: SSAValue | None,
        is_causal: bool,
        scale: float | None,
    ):
        props: dict[str, Attribute] = {"is_causal": BoolAttr.from_bool(is_causal)}
        if scale is not None:
            props["scale"] = float_attr(scale)
        qs, vs = shape_of(q.type), shape_of(v.type)
        super().__init__(
            operands=[q, k, v, [mask] if mask else []],
            properties=props,
            result_types=[tensor((*qs[:-1], vs[-1]), _elt(q))],
        )

    def infer(self) -> TensorType:
        q, k, v = (shape_of(x.type) for x in (self.query, self.key, self.value))
        if not len(q) == len(k) == len(v) >= 2:
            raise VerifyException("query, key and value must share a rank >= 2")
        if q[-1] != k[-1] and DYN not in (q[-1], k[-1]):
            raise VerifyException(f"query and key head dims differ: {q[-1]} vs {k[-1]}")
        if len(q) >= 3 and DYN not in (q[-3], k[-3]) and q[-3] % k[-3]:
            raise VerifyException(f"{q[-3]} query heads cannot share {k[-3]} key heads")
        if not _elt(self.query) == _elt(self.key) == _elt(self.value):
            raise VerifyException("query, key and value must share an element type")
        if k[-2] != v[-2] and DYN not in (k[-2], v[-2]):
            raise VerifyException(f"key and value sequence lengths differ: {k[-2]} vs {v[-2]}")
        if self.mask is not None:
            m = shape_of(self.mask.type)
            if _elt(self.mask) not in (i1, _elt(self.query)):
                raise VerifyException("mask must be i1 (true = attend) or the query's element type")
            try:
                broadcast(m, (*q[:-1], k[-2]))
            except VerifyException:
                raise VerifyException(
                    f"mask {fmt(m)} does not broadcast to the scores {fmt((*q[:-1], k[-2]))}"
                ) from None
        return tensor((*q[:-1], v[-1]), _elt(self.query))


@irdl_op_definition
class ConvOp(GmlOp):
    """N-d convolution, NC[spatial] layout, weight OI[spatial] (aten.convolution)."""

    name = "gml.conv"
    input = operand_def(AnyTensor)
    weight = operand_def(AnyTensor)
    bias = opt_operand_def(AnyTensor)
    stride = prop_def(IntArray)
    padding = prop_def(IntArray)
    dilation = prop_def(IntArray)
    groups = prop_def(IntegerAttr[I64])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `,` $weight (`bias` $bias^)? `stride` $stride `padding` $padding "
        "`dilation` $dilation `groups` $groups attr-dict `:` functional-type(operands, results)"
    )

    def __init__(
        self,
        input: SSAValue,
        weight: SSAValue,
        bias: SSAValue | None,
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int,
        type: TensorType,
    ):
        super().__init__(
            operands=[input, weight, [bias] if bias else []],
            properties={
                "stride": ints_attr(stride),
                "padding": ints_attr(padding),
                "dilation": ints_attr(dilation),
                "groups": int_attr(groups),
            },
            result_types=[type],
        )

    def infer(self) -> TensorType:
        x, w = shape_of(self.input.type), shape_of(self.weight.type)
        n = len(x) - 2
        props = [_ints(p) for p in (self.stride, self.padding, self.dilation)]
        if len(w) != n + 2 or any(len(p) != n for p in props):
            raise VerifyException(f"weight rank and stride/padding/dilation must match {n}-d input")
        g = self.groups.value.data
        if g < 1 or any(v < 1 for v in props[0] + props[2]):
            raise VerifyException("groups, stride and dilation must be positive")
        if any(v < 0 for v in props[1]):
            raise VerifyException("padding must be non-negative")
        if _elt(self.weight) != _elt(self.input):
            raise VerifyException("weight element type must match the input's")
        if self.bias is not None and shape_of(self.bias.type) != (w[0],):
            raise VerifyException(f"bias must have shape {w[0]} (one per output channel)")
        if x[1] != DYN and x[1] != w[1] * g:
            raise VerifyException(f"input has {x[1]} channels, weight expects {w[1] * g}")
        stride, pad, dil = props
        out = [x[0], w[0]]
        for i in range(n):
            if x[2 + i] == DYN:
                out.append(DYN)
            else:
                out.append((x[2 + i] + 2 * pad[i] - dil[i] * (w[2 + i] - 1) - 1) // stride[i] + 1)
        return tensor(out, _elt(self.input))


@irdl_op_definition
class BatchNormOp(GmlOp):
    """Inference batch norm over dim 1 with running statistics."""

    name = "gml.batch_norm"
    input = operand_def(AnyTensor)
    weight = operand_def(AnyTensor)
    bias = operand_def(AnyTensor)
    mean = operand_def(AnyTensor)
    var = operand_def(AnyTensor)
    eps = prop_def(FloatAttr[Float64Type])
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `,` $weight `,` $bias `,` $mean `,` $var `eps` $eps attr-dict "
        "`:` functional-type(operands, results)"
    )

    def __init__(
        self,
        input: SSAValue,
        weight: SSAValue,
        bias: SSAValue,
        mean: SSAValue,
        var: SSAValue,
        eps: float,
    ):
        super().__init__(
            operands=[input, weight, bias, mean, var],
            properties={"eps": float_attr(eps)},
            result_types=[input.type],
        )

    def infer(self) -> TensorType:
        x = shape_of(self.input.type)
        for v in (self.weight, self.bias, self.mean, self.var):
            if shape_of(v.type) != (x[1],) and x[1] != DYN:
                raise VerifyException(f"statistics must have shape {x[1]}")
        assert isinstance(self.input.type, TensorType)
        return self.input.type


class Pool2dOp(GmlOp):
    input = operand_def(AnyTensor)
    kernel = prop_def(IntArray)
    stride = prop_def(IntArray)
    padding = prop_def(IntArray)
    ceil_mode = prop_def(BoolAttr, default_value=BoolAttr.from_bool(False))
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `kernel` $kernel `stride` $stride `padding` $padding (`ceil_mode` $ceil_mode^)? "
        "attr-dict `:` type($input) `to` type($result)"
    )

    def __init__(
        self,
        input: SSAValue,
        kernel: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        ceil_mode: bool,
        type: TensorType,
        extra: dict[str, Attribute] | None = None,
    ):
        super().__init__(
            operands=[input],
            properties={
                "kernel": ints_attr(kernel),
                "stride": ints_attr(stride),
                "padding": ints_attr(padding),
                "ceil_mode": BoolAttr.from_bool(ceil_mode),
                **(extra or {}),
            },
            result_types=[type],
        )

    def window_dilation(self) -> tuple[int, ...]:
        return (1, 1)

    def infer(self) -> TensorType:
        x = shape_of(self.input.type)
        k, s, p = _ints(self.kernel), _ints(self.stride), _ints(self.padding)
        d = self.window_dilation()
        if len(x) != 4 or not len(k) == len(s) == len(p) == len(d) == 2:
            raise VerifyException(
                "2-d pooling takes an NCHW input and 2-element kernel/stride/padding"
            )
        if any(v < 1 for v in k + s + d) or any(v < 0 for v in p):
            raise VerifyException(
                "kernel, stride and dilation must be positive, padding non-negative"
            )
        out = list(x[:2])
        for i in range(2):
            size = x[2 + i]
            if size == DYN:
                out.append(DYN)
                continue
            # a dilated window spans d*(k-1)+1 input elements
            span = size + 2 * p[i] - (d[i] * (k[i] - 1) + 1)
            n = (-(-span // s[i]) if self.ceil_mode.value.data else span // s[i]) + 1
            if self.ceil_mode.value.data and (n - 1) * s[i] >= size + p[i]:
                n -= 1
            if n < 1:
                raise VerifyException(f"the pooling window does not fit input dim {2 + i}")
            out.append(n)
        return tensor(out, _elt(self.input))


@irdl_op_definition
class MaxPool2dOp(Pool2dOp):
    """2-d max pooling (padding counts as -inf); windows may be dilated."""

    name = "gml.max_pool2d"
    dilation = prop_def(IntArray, default_value=ints_attr([1, 1]))
    assembly_format = (
        "$input `kernel` $kernel `stride` $stride `padding` $padding "
        "(`dilation` $dilation^)? (`ceil_mode` $ceil_mode^)? "
        "attr-dict `:` type($input) `to` type($result)"
    )

    def __init__(
        self,
        input: SSAValue,
        kernel: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        ceil_mode: bool,
        type: TensorType,
        dilation: Sequence[int] = (1, 1),
    ):
        super().__init__(
            input, kernel, stride, padding, ceil_mode, type, {"dilation": ints_attr(dilation)}
        )

    def window_dilation(self) -> tuple[int, ...]:
        return _ints(self.dilation)


@irdl_op_definition
class AvgPool2dOp(Pool2dOp):
    """2-d average pooling. The divisor is `divisor_override` when set, else the window's
    size clipped to the padded input (`count_include_pad`, torch's default) or to the
    input alone (padding not counted)."""

    name = "gml.avg_pool2d"
    count_include_pad = prop_def(BoolAttr, default_value=BoolAttr.from_bool(True))
    divisor_override = opt_prop_def(IntegerAttr[I64])
    assembly_format = (
        "$input `kernel` $kernel `stride` $stride `padding` $padding (`ceil_mode` $ceil_mode^)? "
        "(`count_include_pad` $count_include_pad^)? (`divisor` $divisor_override^)? "
        "attr-dict `:` type($input) `to` type($result)"
    )

    def __init__(
        self,
        input: SSAValue,
        kernel: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        ceil_mode: bool,
        type: TensorType,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ):
        extra: dict[str, Attribute] = {"count_include_pad": BoolAttr.from_bool(count_include_pad)}
        if divisor_override is not None:
            extra["divisor_override"] = int_attr(divisor_override)
        super().__init__(input, kernel, stride, padding, ceil_mode, type, extra)

    def infer(self) -> TensorType:
        if self.divisor_override is not None and self.divisor_override.value.data == 0:
            raise VerifyException("divisor_override must not be 0")
        return super().infer()


@irdl_op_definition
class AdaptiveAvgPool2dOp(GmlOp):
    """Average pooling to a fixed output size (the result's last two dims)."""

    name = "gml.adaptive_avg_pool2d"
    input = operand_def(AnyTensor)
    result = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$input attr-dict `:` type($input) `to` type($result)"

    def __init__(self, input: SSAValue, type: TensorType):
        super().__init__(operands=[input], result_types=[type])

    def verify_(self) -> None:
        x, y = shape_of(self.input.type), shape_of(self.result.type)
        if len(x) != 4 or len(y) != 4 or x[:2] != y[:2]:
            raise VerifyException("adaptive pooling keeps N and C of an NCHW input")
        if _elt(self.input) != _elt(self.result):
            raise VerifyException("adaptive pooling keeps the element type")


# ------------------------------------------------------------- structure ---


@irdl_op_definition
class FusionOp(IRDLOperation):
    """A group of elementwise ops a backend may emit as one kernel."""

    name = "gml.fusion"
    outputs = var_result_def(AnyTensor)
    body = region_def("single_block")
    traits = traits_def(Pure())
    assembly_format = "attr-dict-with-keyword `:` type($outputs) $body"

    def __init__(self, body: list[Operation], yielded: Sequence[SSAValue]):
        from xdsl.ir import Block

        block = Block(body)
        block.add_op(YieldOp(yielded))
        super().__init__(result_types=[[v.type for v in yielded]], regions=[Region(block)])

    def verify_(self) -> None:
        term = self.body.block.last_op
        if not isinstance(term, YieldOp):
            raise VerifyException("gml.fusion body must end in gml.yield")
        if [v.type for v in term.values] != [r.type for r in self.outputs]:
            raise VerifyException("gml.yield types must match the gml.fusion results")
        # backends emit the group as one loop over the broadcast of its members' shapes
        domain: tuple[int, ...] = ()
        for member in self.body.block.ops:
            for r in member.results:
                try:
                    domain = broadcast(domain, shape_of(r.type))
                except VerifyException:
                    raise VerifyException(
                        f"members must broadcast to one domain: {member.name} "
                        f"gives {fmt(shape_of(r.type))} in a group over {fmt(domain)}"
                    ) from None


@irdl_op_definition
class SegmentOp(IRDLOperation):
    """A piece of the program placed on one device; inputs enter as block arguments."""

    name = "gml.segment"
    device = prop_def(StringAttr)
    inputs = var_operand_def()
    outputs = var_result_def()
    body = region_def("single_block")
    traits = traits_def(IsolatedFromAbove())
    assembly_format = (
        "$device `(` $inputs `)` attr-dict `:` functional-type($inputs, $outputs) $body"
    )

    def __init__(
        self,
        device: str,
        inputs: Sequence[SSAValue],
        output_types: Sequence[Attribute],
        body: Region,
    ):
        super().__init__(
            operands=[list(inputs)],
            result_types=[list(output_types)],
            properties={"device": StringAttr(device)},
            regions=[body],
        )

    def verify_(self) -> None:
        block = self.body.block
        if [a.type for a in block.args] != [v.type for v in self.inputs]:
            raise VerifyException("segment block arguments must match its inputs")
        term = block.last_op
        if not isinstance(term, YieldOp):
            raise VerifyException("gml.segment body must end in gml.yield")
        if [v.type for v in term.values] != [r.type for r in self.outputs]:
            raise VerifyException("gml.yield types must match the gml.segment results")


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Returns values from a gml region op."""

    name = "gml.yield"
    values = var_operand_def()
    traits = traits_def(IsTerminator(), Pure(), HasParent(FusionOp, SegmentOp))
    assembly_format = "($values^ `:` type($values))? attr-dict"

    def __init__(self, values: Sequence[SSAValue]):
        super().__init__(operands=[list(values)])


ELEMENTWISE: tuple[type[Operation], ...] = (UnaryOp, BinaryOp, WhereOp, CastOp)
"""Op classes whose result element i depends only on operand element i (after broadcast)."""

GML = Dialect(
    "gml",
    [
        ParamOp,
        ConstantOp,
        DimOp,
        FullOp,
        ArangeOp,
        NegOp,
        ExpOp,
        LogOp,
        SqrtOp,
        RsqrtOp,
        AbsOp,
        TanhOp,
        SigmoidOp,
        ReluOp,
        SinOp,
        CosOp,
        ErfOp,
        ReciprocalOp,
        NotOp,
        SiluOp,
        GeluOp,
        ClampOp,
        AddOp,
        SubOp,
        MulOp,
        DivOp,
        PowOp,
        MaximumOp,
        MinimumOp,
        AndOp,
        OrOp,
        EqOp,
        NeOp,
        LtOp,
        LeOp,
        GtOp,
        GeOp,
        WhereOp,
        CastOp,
        ReshapeOp,
        ExpandOp,
        PermuteOp,
        SliceOp,
        ConcatOp,
        PadOp,
        EmbeddingOp,
        GatherOp,
        IndexOp,
        CumsumOp,
        SumOp,
        MeanOp,
        AmaxOp,
        AminOp,
        AnyOp,
        VarOp,
        ArgmaxOp,
        ArgminOp,
        MatmulOp,
        SoftmaxOp,
        LogSoftmaxOp,
        LayerNormOp,
        SdpaOp,
        ConvOp,
        BatchNormOp,
        MaxPool2dOp,
        AvgPool2dOp,
        AdaptiveAvgPool2dOp,
        FusionOp,
        SegmentOp,
        YieldOp,
    ],
    [],
)
