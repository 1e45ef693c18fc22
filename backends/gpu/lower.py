"""The GPU lowering with every op family: codegen.py's own (the lower_*.py classes its
_Lowering builds on) plus those kept in their own modules (conv.py: convolution, batch
norm, pooling; tensor_ops.py: gather, pad, arg-reductions, var). This module sits above
the three, so codegen.py never imports the modules that build on it."""

from __future__ import annotations

from typing import Any

from xdsl.dialects import func
from xdsl.ir import Operation

from gimlet.errors import UnsupportedOpError

from . import conv, tensor_ops
from .codegen import Lowered, _Lowering, lower_with


def families(low: _Lowering) -> dict[type[Operation], Any]:
    """The lowerings of conv.py and tensor_ops.py, bound to `low`."""
    return {**conv.handlers(low), **tensor_ops.handlers(low)}


def lower(fn: func.FuncOp) -> Lowered:
    """The GPU program for `fn`; raises UnsupportedOpError naming the first op it cannot
    lower (the caller falls back to the interpreter for that function)."""
    return lower_with(fn, families)


def unsupported(fn: func.FuncOp) -> list[str]:
    """One line per op this backend cannot lower: op, location and why."""
    try:
        lower(fn)
    except UnsupportedOpError as e:
        return [str(e)]
    return []
