"""infer-shapes: refine result types from operand types, op by op, in order.

Each gml op's `infer()` gives the type its operands imply; where that is more
static than the declared type (a `?` the importer or a user left), the result
type is replaced and the function signature follows. Contradictions are left
for the verifier, which reports them against the op.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, ModuleOp, TensorType
from xdsl.ir import Attribute, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import Rewriter
from xdsl.utils.exceptions import VerifyException

from gimlet.dialects import gml
from gimlet.dialects.gml import GmlOp
from gimlet.dialects.shapes import DYN, shape_of, shapes_compatible


def _more_static(new: TensorType, old: TensorType) -> bool:
    a, b = shape_of(new), shape_of(old)
    return (
        new.element_type == old.element_type
        and shapes_compatible(a, b)
        and a != b
        and all(x != DYN or y == DYN for x, y in zip(a, b, strict=True))
    )


def _refine(value: SSAValue, new: Attribute) -> bool:
    """Give `value` the type `new` if that only makes `?` dims static."""
    old = value.type
    if isinstance(old, TensorType) and isinstance(new, TensorType) and _more_static(new, old):
        Rewriter.replace_value_with_new_type(value, new)
        return True
    return False


@dataclass(frozen=True)
class InferShapes(ModulePass):
    """Refine `?` dims in result types from operand types (shape/dtype inference)."""

    name = "infer-shapes"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        # Region ops (gml.fusion, gml.segment) take their result types from their
        # terminators, which are refined after them in a pre-order walk: iterate.
        for _ in range(8):
            if not self._sweep(op):
                return

    def _sweep(self, op: ModuleOp) -> bool:
        changed = False
        for inner in list(op.walk()):
            if isinstance(inner, gml.SegmentOp):  # inputs enter as block arguments
                for arg, v in zip(inner.body.block.args, inner.inputs, strict=True):
                    changed |= _refine(arg, v.type)
            if isinstance(inner, gml.FusionOp | gml.SegmentOp):
                term = inner.body.block.last_op
                assert term is not None
                for res, v in zip(inner.results, term.operands, strict=True):
                    changed |= _refine(res, v.type)
                continue
            if isinstance(inner, GmlOp) and inner.results:
                try:
                    inferred = inner.infer()
                except VerifyException:
                    continue  # the verifier reports it with the op's location
                if inferred is not None:
                    changed |= _refine(inner.results[0], inferred)
            elif isinstance(inner, func.ReturnOp):
                fn = inner.parent_op()
                if isinstance(fn, func.FuncOp):
                    inputs = fn.function_type.inputs.data
                    outputs = [v.type for v in inner.arguments]
                    fn.function_type = FunctionType.from_lists(list(inputs), outputs)
        return changed
