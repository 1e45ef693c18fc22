"""canonicalize: fold constants, drop no-op shape ops, merge chains, remove dead code.

Folding reuses the reference interpreter, so a folded value is by construction
what the unfolded op would have computed. Only small results are folded
(`max-elements`), because a folded constant is printed inline in the IR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import DenseIntOrFPElementsAttr, ModuleOp, TensorType
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
)
from xdsl.transforms.dead_code_elimination import dce

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN, shape_of

_NOT_FOLDABLE = (gml.ParamOp, gml.ConstantOp, gml.FusionOp, gml.YieldOp, gml.DimOp)


def dense_attr(value: np.ndarray, type: TensorType) -> DenseIntOrFPElementsAttr:
    is_float = value.dtype.kind == "f" or value.dtype.name == "bfloat16"
    flat = value.astype(np.float64 if is_float else np.int64).ravel().tolist()
    return gml.dense(type, flat)


def _replace(rewriter: PatternRewriter, old: Operation, new: Operation) -> None:
    new.location = old.location  # a rewrite keeps pointing at the user's line
    rewriter.replace_op(old, new)


@dataclass
class FoldConstants(RewritePattern):
    max_elements: int

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if op.dialect_name() != "gml" or isinstance(op, _NOT_FOLDABLE) or len(op.results) != 1:
            return
        if not op.operands or not all(isinstance(v.owner, gml.ConstantOp) for v in op.operands):
            return
        t = op.results[0].type
        if (
            not isinstance(t, TensorType)
            or DYN in shape_of(t)
            or t.element_count() > self.max_elements
        ):
            return
        from gimlet.interpreter import evaluate_op

        args = [evaluate_op(v.owner, [])[0] for v in op.operands]  # type: ignore[arg-type]
        (value,) = evaluate_op(op, args)
        _replace(rewriter, op, gml.ConstantOp(dense_attr(np.asarray(value), t)))


class RemoveNoOpShapeOps(RewritePattern):
    """reshape/expand/cast/slice/permute that leave the value as it was."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if isinstance(op, gml.ReshapeOp | gml.ExpandOp | gml.CastOp):
            if op.input.type == op.result.type and DYN not in shape_of(op.result.type):
                rewriter.replace_op(op, [], [op.input])
        elif isinstance(op, gml.PermuteOp):
            if list(gml._ints(op.dims)) == list(range(len(gml._ints(op.dims)))):
                rewriter.replace_op(op, [], [op.input])
        elif isinstance(op, gml.SliceOp):
            full = op.start.value.data == 0 and op.step.value.data == 1 and not op.dyn_start
            if (
                full
                and not op.dyn_end
                and op.input.type == op.result.type
                and DYN not in shape_of(op.result.type)
            ):
                rewriter.replace_op(op, [], [op.input])


class MergeChains(RewritePattern):
    """reshape(reshape(x)) -> reshape(x); permute(permute(x)) -> one permute."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if isinstance(op, gml.ReshapeOp) and isinstance(op.input.owner, gml.ReshapeOp):
            inner = op.input.owner
            assert isinstance(op.result.type, TensorType)
            _replace(rewriter, op, gml.ReshapeOp(inner.input, op.result.type, op.dynamic_sizes()))
        elif isinstance(op, gml.PermuteOp) and isinstance(op.input.owner, gml.PermuteOp):
            first = op.input.owner
            a, b = gml._ints(first.dims), gml._ints(op.dims)
            _replace(rewriter, op, gml.PermuteOp(first.input, [a[d] for d in b]))


@dataclass(frozen=True)
class Canonicalize(ModulePass):
    """Fold constants, drop no-op reshapes/permutes, merge chains, remove dead ops."""

    name = "canonicalize"
    max_elements: int = 64

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        patterns = [FoldConstants(self.max_elements), RemoveNoOpShapeOps(), MergeChains()]
        PatternRewriteWalker(GreedyRewritePatternApplier(patterns)).rewrite_module(op)  # type: ignore[arg-type]
        dce(op)
