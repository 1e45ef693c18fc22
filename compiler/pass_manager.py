"""Named passes, pipelines, and the instrumentation users see (dumps, timing).

The pass manager verifies the module after every pass, so a broken rewrite is
reported against the pass that made it, not at some later stage.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.transforms.common_subexpression_elimination import CommonSubexpressionElimination
from xdsl.utils.arg_spec import parse_pipeline

from gimlet.errors import UserError
from gimlet.ir import context, print_ir, verify
from gimlet.passes.canonicalize import Canonicalize
from gimlet.passes.fuse_elementwise import FuseElementwise
from gimlet.passes.infer_shapes import InferShapes
from gimlet.passes.insert_comm import InsertComm
from gimlet.passes.outline_segments import OutlineSegments
from gimlet.passes.overlap_comm import OverlapComm
from gimlet.passes.place import Place
from gimlet.placement.comm_check import verify_transfers


def verify_program(module: ModuleOp, after: str | None = None) -> None:
    """Everything the verifier checks: structure and SSA (`ir.verify`), then, in a placed
    program, that sends and receives pair up and cannot deadlock (`verify_transfers`)."""
    verify(module, after)
    verify_transfers(module, after)


PASSES: dict[str, type[ModulePass]] = {
    p.name: p
    for p in (
        InferShapes,
        Canonicalize,
        CommonSubexpressionElimination,
        FuseElementwise,
        Place,
        OutlineSegments,
        InsertComm,
        OverlapComm,
    )
}
DEFAULT_PIPELINE = "infer-shapes,canonicalize,cse,fuse-elementwise"


def summary(p: type[ModulePass]) -> str:
    if p is CommonSubexpressionElimination:
        return "Merge identical side-effect-free ops (xDSL's CSE)."
    return (p.__doc__ or "").strip().splitlines()[0]


def list_passes() -> str:
    width = max(len(n) for n in PASSES)
    return "\n".join(f"  {n.ljust(width)}  {summary(p)}" for n, p in PASSES.items())


def build_pipeline(spec: str) -> list[ModulePass]:
    passes = []
    try:
        specs = list(parse_pipeline(spec))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # xDSL's ArgSpecParseError derives from BaseException
        raise UserError(f"malformed --pass-pipeline '{spec}': {e}") from e
    for s in specs:
        if s.name not in PASSES:
            raise UserError(
                f"unknown pass '{s.name}' in --pass-pipeline; available: {', '.join(PASSES)}"
            )
        try:
            passes.append(PASSES[s.name].from_pass_spec(s))
        except Exception as e:
            raise UserError(f"bad options for pass '{s.name}': {e}") from e
    return passes


class Dumps(Mapping[str, str]):
    """The IR after each pass (`gimlet.compile(...).dumps`), printed when first read.
    A snapshot is a clone of the module, ~5x cheaper than printing it (GPT-2 small:
    25 ms against 130 ms), and gimlet.compile keeps one per pass on every compile while
    most callers never read them."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[ModuleOp | str, bool]] = {}

    def keep(self, key: str, ir: ModuleOp | str, locations: bool) -> None:
        """`ir`: printed text, or a module no one changes afterwards."""
        self._kept[key] = (ir, locations)

    def __getitem__(self, key: str) -> str:
        ir, locations = self._kept[key]
        if isinstance(ir, ModuleOp):
            ir = print_ir(ir, locations)
            self._kept[key] = (ir, locations)
        return ir

    def __iter__(self) -> Iterator[str]:
        return iter(self._kept)

    def __len__(self) -> int:
        return len(self._kept)


@dataclass
class Instrumentation:
    """What to print or save around each pass (the `--print-ir-*`, `--dump-dir`, `--timing` flags)."""

    print_after_all: bool = False
    print_before: set[str] = field(default_factory=set)
    print_after: set[str] = field(default_factory=set)
    dump_dir: str | None = None
    timing: bool = False
    locations: bool = True
    stream: TextIO = sys.stderr
    timings: list[tuple[str, float]] = field(default_factory=list)
    dumps: Dumps = field(default_factory=Dumps)
    keep_dumps: bool = False

    def _emit(self, header: str, module: ModuleOp) -> None:
        self.stream.write(f"// -----// IR Dump {header} //----- //\n")
        self.stream.write(print_ir(module, self.locations))

    def _dump(self, index: int, name: str, module: ModuleOp) -> None:
        text = None
        if self.dump_dir is not None:
            text = print_ir(module, self.locations)
            with open(os.path.join(self.dump_dir, f"{index:02d}-{name}.mlir"), "w") as f:
                f.write(text)
        if self.keep_dumps:
            self.dumps.keep(f"{index:02d}-{name}", text or module.clone(), self.locations)


def run_pipeline(
    module: ModuleOp,
    pipeline: list[ModulePass] | str,
    instr: Instrumentation | None = None,
    ctx: Context | None = None,
    on_pass: Callable[[str], None] | None = None,
) -> ModuleOp:
    instr = instr or Instrumentation()
    passes = build_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    ctx = ctx or context()
    if instr.dump_dir is not None:
        os.makedirs(instr.dump_dir, exist_ok=True)
    instr._dump(0, "input", module)
    for i, p in enumerate(passes, start=1):
        if on_pass:
            on_pass(p.name)
        if p.name in instr.print_before:
            instr._emit(f"Before {p.name}", module)
        start = time.perf_counter()
        p.apply(ctx, module)
        instr.timings.append((p.name, time.perf_counter() - start))
        verify_program(module, after=p.name)
        if instr.print_after_all or p.name in instr.print_after:
            instr._emit(f"After {p.name}", module)
        instr._dump(i, p.name, module)
    if instr.timing:
        instr.stream.write(format_timings(instr.timings))
    return module


def format_timings(timings: list[tuple[str, float]]) -> str:
    total = sum(t for _, t in timings) or 1e-12
    lines = [
        "===-------------------------------------------------------------------------===",
        "                         ... Pass execution timing report ...",
        "===-------------------------------------------------------------------------===",
        f"  Total Execution Time: {total:.4f} seconds",
        "",
        "  ----Wall Time----  ----Name----",
    ]
    for name, t in timings:
        lines.append(f"  {t:.4f} ({100 * t / total:5.1f}%)  {name}")
    lines.append(f"  {total:.4f} (100.0%)  Total")
    return "\n".join(lines) + "\n"
