"""Reading, printing and verifying gml IR text."""

from __future__ import annotations

import io
from collections.abc import Sequence

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.arith import Arith
from xdsl.dialects.builtin import Builtin, ModuleOp, StringAttr
from xdsl.dialects.func import Func
from xdsl.ir import Operation, SSAValue
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import DiagnosticException, ParseError, VerifyException

from gimlet.dialects.comm import COMM
from gimlet.dialects.gml import GML
from gimlet.errors import VerificationError, with_location


def context() -> Context:
    ctx = Context()
    for dialect in (Builtin, Func, Arith, GML, COMM):
        ctx.load_dialect(dialect)
    return ctx


def parse(text: str, filename: str = "<stdin>") -> ModuleOp:
    """Parse IR text; syntax errors become VerificationError with file:line:col."""
    if all(not line.strip() or line.lstrip().startswith("//") for line in text.splitlines()):
        return ModuleOp([])
    try:
        module = Parser(context(), text, filename).parse_module()
    except ParseError as e:
        raise VerificationError(_format_parse_error(str(e))) from e
    except DiagnosticException as e:
        raise VerificationError(f"{filename}: {str(e).strip()}") from e
    return module


def _format_parse_error(text: str) -> str:
    """xDSL prints `file:l:c / source / caret / message`; lead with `file:l:c: message`."""
    lines = text.strip().splitlines()
    if len(lines) >= 4:
        return "\n".join([f"{lines[0]}: {' '.join(lines[3:])}", *lines[1:3]])
    return text.strip()


def print_ir(op: Operation, locations: bool = True) -> str:
    out = io.StringIO()
    Printer(stream=out, print_debuginfo=locations).print_op(op)
    # Unknown locations carry no information; leave them out of dumps.
    return out.getvalue().replace(" loc(unknown)", "") + "\n"


def verify(module: ModuleOp, after: str | None = None) -> None:
    """xDSL's structural verifier plus SSA dominance, as one user-facing error.

    A placed program's transfers are checked on top of this by
    `gimlet.pass_manager.verify_program` (the check needs the target's cluster)."""
    try:
        check_dominance(module)
    except _DominanceError as e:
        raise VerificationError(_describe_failure(e.op, e, after)) from e
    for op in module.walk():
        try:
            op.verify(verify_nested_ops=False)
        except VerifyException as e:
            cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
            raise VerificationError(_describe_failure(op, cause, after)) from e


def check_dominance(root: Operation) -> None:
    """Each operand is defined before its use (regions here are single-block)."""
    defined: set[SSAValue] = set()

    def walk(op: Operation) -> None:
        for v in op.operands:
            if v not in defined:
                raise _DominanceError(op, list(op.operands).index(v))
        for region in op.regions:
            for block in region.blocks:
                defined.update(block.args)
                for inner in block.ops:
                    walk(inner)
        defined.update(op.results)

    for region in root.regions:
        for block in region.blocks:
            defined.update(block.args)
            for op in block.ops:
                walk(op)


class _DominanceError(VerifyException):
    def __init__(self, op: Operation, index: int):
        super().__init__(f"operand #{index} does not dominate its use")
        self.op = op


def _describe_failure(op: Operation, e: Exception, after: str | None) -> str:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = f" after pass '{after}'" if after else ""
    return with_location(op.location, f"{op.name}: {message}{where}")


def external_operands(ops: Sequence[Operation]) -> list[SSAValue]:
    """The values `ops` use that none of them defines, in order of first use: a fused
    group's inputs, as both backends' lowerings read them."""
    inside = {r for op in ops for r in op.results}
    out: list[SSAValue] = []
    for op in ops:
        for v in op.operands:
            if v not in inside and v not in out:
                out.append(v)
    return out


def main_func(module: ModuleOp, entry: str = "main") -> func.FuncOp:
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == entry:
            return op
    raise VerificationError(f"no func.func @{entry} in the module")


def input_names(module: ModuleOp, entry: str = "main") -> list[str]:
    """Argument names recorded by the importer (`{gml.name = ...}`), else arg0, arg1, ..."""
    fn = main_func(module, entry)
    names = []
    for i in range(len(fn.args)):
        attrs = fn.arg_attrs.data[i].data if fn.arg_attrs else {}
        name = attrs.get("gml.name")
        names.append(name.data if isinstance(name, StringAttr) else f"arg{i}")
    return names
