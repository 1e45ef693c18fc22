"""The reference backend: segments run on the numpy interpreter (gimlet.interpreter).

Every device kind can fall back to it, and every worker has one `InterpreterExecutor`:
it runs the top-level ops of the host program, and compiled backends hand it their comm
ops and size arithmetic. comm ops are forwarded to the worker's `CommHandler` (its
torch.distributed endpoints).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    impl,
    register_impls,
)
from xdsl.interpreters.arith import ArithFunctions
from xdsl.interpreters.func import FuncFunctions
from xdsl.ir import Operation

from gimlet.artifacts import IR_FILE
from gimlet.backends.base import CommHandler, Executor, FieldReader, HostExecutor
from gimlet.dialects import comm, gml
from gimlet.interpreter import GmlFunctions

BeforeOp = Callable[..., None]  # (op, what="") -> None: progress and fault hook


@register_impls
class _DistComm(InterpreterFunctions):
    """comm ops forwarded to the worker's endpoints (tokens are plain tuples)."""

    def __init__(self, handler: CommHandler):
        self.handler = handler

    @impl(comm.SendOp)
    def run_send(self, interp: Interpreter, op: comm.SendOp, args: PythonValues) -> PythonValues:
        self.handler.send(op, args[0])
        return ()

    @impl(comm.ISendOp)
    def run_isend(self, interp: Interpreter, op: comm.ISendOp, args: PythonValues) -> PythonValues:
        self.handler.send(op, args[0])
        return (("send", op),)

    @impl(comm.RecvOp)
    def run_recv(self, interp: Interpreter, op: comm.RecvOp, args: PythonValues) -> PythonValues:
        return (self.handler.wait_recv(self.handler.post_recv(op), op),)

    @impl(comm.IRecvOp)
    def run_irecv(self, interp: Interpreter, op: comm.IRecvOp, args: PythonValues) -> PythonValues:
        return (("recv", self.handler.post_recv(op)),)

    @impl(comm.WaitOp)
    def run_wait(self, interp: Interpreter, op: comm.WaitOp, args: PythonValues) -> PythonValues:
        kind, payload = args[0]
        if kind == "recv":
            return (self.handler.wait_recv(payload, op),)
        return ()  # sends complete at program end (buffered semantics, see channels.py)


class InterpreterExecutor:
    """Runs segments on the numpy reference interpreter, one top-level op at a time so the
    worker can track (and fault-inject at) the current op."""

    def __init__(
        self,
        module: ModuleOp,
        weights: Mapping[str, np.ndarray],
        handler: CommHandler,
        before_op: BeforeOp = lambda op, what="": None,
        on_span: Callable[[str, float, float], None] = lambda name, start, end: None,
    ):
        self.before_op = before_op
        self.on_span = on_span  # compiled backends report their kernels' time spans here
        self.handler = handler  # comm ops may go to it directly (backends/parts.py)
        self.interp = Interpreter(module)
        self.interp.register_implementations(GmlFunctions(weights))
        self.interp.register_implementations(_DistComm(handler))
        self.interp.register_implementations(FuncFunctions())
        self.interp.register_implementations(ArithFunctions())

    def run_op(self, op: Operation, inputs: Sequence[Any]) -> list[Any]:
        self.before_op(op)
        with np.errstate(all="ignore"):
            return list(self.interp.run_op(op, tuple(inputs)))

    def run_segment(
        self,
        segment: gml.SegmentOp,
        inputs: Sequence[Any],
        index: int = -1,
        artefact: dict[str, Any] | None = None,
    ) -> list[Any]:
        # in the interpreter's scope, not a local dict: gml.fusion bodies read outer values
        interp = self.interp
        interp.push_scope("gml.segment")
        try:
            interp.set_values(zip(segment.body.block.args, inputs, strict=True))
            for op in segment.body.block.ops:
                if isinstance(op, gml.YieldOp):
                    return list(interp.get_values(op.values))
                results = self.run_op(op, interp.get_values(op.operands))
                interp.set_values(zip(op.results, results, strict=True))
        finally:
            interp.pop_scope()
        raise AssertionError("gml.segment without gml.yield")


class InterpreterBackend:
    """Artefact kind "interpreter": the segment's ops, read from the bundle's model.mlir."""

    name = "interpreter"
    option = "interpreter"
    device_kinds: tuple[str, ...] = ()  # every kind
    label = "the reference interpreter"

    def compile_segment(
        self,
        segment: gml.SegmentOp,
        index: int,
        bundle_dir: str,
        device: Mapping[str, str],
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        return {"kind": self.name, "file": IR_FILE}

    def artefact_files(self, artefact: dict[str, Any], read: FieldReader, path: str) -> list[str]:
        return []  # model.mlir, which every artefact names as "file"

    def describe(self, artefact: dict[str, Any]) -> str:
        return "reference interpreter"

    def load(self, host: HostExecutor, weights: Mapping[str, np.ndarray], bundle: Any) -> Executor:
        return host  # the worker's own: it already holds the module and the weights


BACKEND = InterpreterBackend()
