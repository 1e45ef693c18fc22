"""`gimletc`: the command line. Exit 0 ok, 1 user error, 2 internal error."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from gimlet.artifacts import (
    INPUTS_FILE,
    IR_FILE,
    WEIGHTS_FILE,
    WeightsWriter,
    format_outputs,
    load_weights,
    read_inputs,
    save_inputs,
    save_outputs,
    save_weights,
    write_atomically,
)
from gimlet.errors import UserError
from gimlet.ir import input_names, parse, print_ir
from gimlet.pass_manager import (
    DEFAULT_PIPELINE,
    Instrumentation,
    build_pipeline,
    list_passes,
    run_pipeline,
    verify_program,
)
from gimlet.passes.insert_comm import InsertComm
from gimlet.passes.outline_segments import OutlineSegments
from gimlet.passes.overlap_comm import OverlapComm
from gimlet.passes.place import Place
from gimlet.progress import step
from gimlet.version import __version__

DESCRIPTION = """\
gimlet: a dataflow compiler for heterogeneous AI inference.

  gimletc compile MODEL -o OUT/     import a PyTorch model, run the pipeline, write IR + weights
  gimletc opt FILE.mlir             run passes on IR text (like mlir-opt); the golden tests use it
  gimletc run MODEL|OUT/|FILE.mlir  execute: a bundle on its devices, IR on the interpreter
  gimletc measure-cpu [-o F]        measure this CPU for the cost model (a .cluster device)

MODEL is path/model.py:factory (factory() returns (module, example_inputs[, dynamic_shapes]))
or a .pt2 file written by torch.export.save.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors are user errors: exit 1
        self.print_usage(sys.stderr)
        self.exit(1, f"gimletc: error: {message}\n")


def _add_pipeline_flags(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("pass pipeline")
    g.add_argument(
        "--pass-pipeline",
        default=default,
        metavar="PIPELINE",
        help=f"comma-separated passes, e.g. 'infer-shapes,canonicalize' (default: '{default}'; "
        "see --list-passes)",
    )
    g.add_argument(
        "--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)"
    )
    g.add_argument(
        "--print-ir-before",
        action="append",
        default=[],
        metavar="PASS",
        help="print the IR before PASS",
    )
    g.add_argument(
        "--print-ir-after",
        action="append",
        default=[],
        metavar="PASS",
        help="print the IR after PASS",
    )
    g.add_argument(
        "--dump-dir", metavar="DIR", help="write NN-<pass>.mlir after each pass into DIR"
    )
    g.add_argument(
        "--timing", action="store_true", help="report the wall time of each pass (stderr)"
    )
    g.add_argument(
        "--no-locations", action="store_true", help="print IR without loc(...) source locations"
    )


def _add_placement_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "heterogeneous placement (adds place, outline-segments, insert-comm, overlap-comm)"
    )
    g.add_argument(
        "--target",
        metavar="CLUSTER",
        help="a .cluster file or presets joined by '+': h100+cpu, 2xh100+cpu, b200+sram+cpu, "
        "b200+mi300x+cpu (presets: h100, h200, b200, mi300x, cpu, sram)",
    )
    g.add_argument(
        "--placement", default="dp", choices=["greedy", "dp", "milp"], help="solver (default: dp)"
    )
    g.add_argument(
        "--objective",
        default="latency",
        choices=["latency", "throughput", "energy", "cost"],
        help="what to minimise (default: latency of one request)",
    )
    g.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="PATTERN=DEVICE",
        help="force ops onto a device: module paths with ranges ('h.0-5=gpu0') or op names "
        "('gml.embedding=cpu0'); repeatable or comma-separated",
    )
    g.add_argument(
        "--dim-hint",
        type=int,
        default=1,
        metavar="N",
        help="size assumed for '?' dims when costing",
    )
    g.add_argument(
        "--repeat",
        action="append",
        default=[],
        metavar="PATTERN=COUNT",
        help="ops under a module path run COUNT times per request, e.g. 'decode=128' decode "
        "steps per prefill (weights their cost in placement and --explain)",
    )
    g.add_argument(
        "--explain",
        nargs="?",
        const="text",
        choices=["text", "json"],
        help="print per segment its device, ops, modelled time, memory and transfers, and why",
    )
    g.add_argument(
        "--graph", metavar="FILE.dot", help="write the partitioned graph as Graphviz DOT"
    )


def _pipeline(args: argparse.Namespace) -> list[ModulePass]:
    passes = build_pipeline(args.pass_pipeline)
    if getattr(args, "target", None):
        passes += [
            Place(
                target=args.target,
                solver=args.placement,
                objective=args.objective,
                pins=",".join(args.pin),
                dim_hint=args.dim_hint,
                repeat=",".join(args.repeat),
                backends=",".join(getattr(args, "backend", [])),
            ),
            OutlineSegments(),
            InsertComm(),
            OverlapComm(dim_hint=args.dim_hint),
        ]
    return passes


def _explain(
    args: argparse.Namespace, module: ModuleOp, runtime: tuple[str, str] | None = None
) -> None:
    """--explain and --graph; `runtime` is how gimlet.load runs the bundle just written
    (processes, why), added to the report."""
    if not getattr(args, "target", None) or not (args.explain or args.graph):
        return
    import json

    from gimlet.placement.backend_ops import parse_choices, restrict
    from gimlet.placement.explain import build_report, to_dot, to_json, to_text
    from gimlet.placement.target import resolve

    cluster = restrict(resolve(args.target), parse_choices(",".join(getattr(args, "backend", []))))
    report = build_report(module, cluster, args.dim_hint)
    if args.explain == "json":
        data = json.loads(to_json(report))
        if runtime:
            data["runtime"] = {"processes": runtime[0], "why": runtime[1]}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif args.explain:
        sys.stdout.write(to_text(report))
        if runtime:
            sys.stdout.write(f"runtime: {_processes_line(runtime)}\n")
    if args.graph:
        with open(args.graph, "w") as f:
            f.write(to_dot(report))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gimletc",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"gimletc {__version__}")
    p.add_argument("--list-passes", action="store_true", help="list the available passes and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "compile",
        help="import a model and write IR + weights",
        description=(
            "Export MODEL with torch.export, decompose to core ATen, import into the gml dialect, run "
            "the pass pipeline and write OUT/model.mlir and OUT/weights.safetensors. OUT is replaced "
            "atomically: a failed compile leaves no partial output. With --target, OUT is a bundle "
            "for `gimletc run OUT/`: a manifest, per-device weights and, for segments placed on "
            "CPU devices, generated C++ and its compiled libraries under OUT/cpu/, for NVIDIA "
            "segments generated CUDA and its nvcc build under OUT/cuda/ (or, with --backend "
            "nvidia=tensorrt, ONNX and an engine build script under OUT/trt/)."
        ),
    )
    c.add_argument("model", metavar="MODEL", help="path/model.py:factory or model.pt2")
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    _add_pipeline_flags(c, DEFAULT_PIPELINE)
    _add_placement_flags(c)
    c.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="KIND=OPTION",
        help="bundles: which backend runs the segments on devices of KIND (by default the "
        "first registered for it, see docs/extending.md; 'interpreter' for the numpy "
        "reference interpreter), e.g. 'cpu=interpreter', over a device's `backend =` in a "
        ".cluster file; a segment a backend cannot lower "
        "falls back to the interpreter, with a note",
    )
    c.add_argument(
        "--no-cache",
        action="store_true",
        help="export again even when the export cache holds this model "
        "($GIMLET_CACHE_DIR, default ~/.cache/gimlet/export; see docs/architecture.md)",
    )
    c.add_argument(
        "--cpu-backend",
        metavar="OPTION",
        help="bundles: --backend cpu=OPTION: 'cxx' (generated C++ compiled with g++, the "
        "default) or 'interpreter'",
    )

    o = sub.add_parser(
        "opt",
        help="run passes on .mlir text",
        description=(
            "Parse FILE (or - for stdin), verify it, run --pass-pipeline (none by default) and print "
            "the result. With --split-input-file, each chunk between '// -----' lines is processed on "
            "its own and errors are reported per chunk (line numbers refer to FILE)."
        ),
    )
    o.add_argument("file", metavar="FILE.mlir")
    o.add_argument("-o", "--output", metavar="OUT.mlir", help="write the IR here instead of stdout")
    o.add_argument(
        "--split-input-file", action="store_true", help="process '// -----' chunks separately"
    )
    _add_pipeline_flags(o, "")

    r = sub.add_parser(
        "run",
        help="execute a bundle on its devices, or a model or IR on the reference interpreter",
        description=(
            "Run a `gimletc compile --target` bundle (OUT/ with a manifest) on its devices: each "
            "segment by its compiled backend (generated C++ on CPUs, CUDA on NVIDIA GPUs; the "
            "numpy reference interpreter where a segment has none or its device is missing), in "
            "this process or a worker process per device (--processes). A model, a compile "
            "output without --target, or an .mlir file runs on the reference interpreter. "
            "Inputs come from --inputs (an .npz whose keys are the input names, or arr_0, "
            "arr_1, ... in order); for path/model.py:factory the factory's example inputs are the "
            "default."
        ),
    )
    r.add_argument("source", metavar="MODEL|OUT/|FILE.mlir")
    r.add_argument("--inputs", metavar="INPUTS.npz")
    r.add_argument("--weights", metavar="WEIGHTS.safetensors", help="weights for an .mlir file")
    r.add_argument("-o", "--output", metavar="OUTPUTS.npz", help="save outputs (out0, out1, ...)")
    _add_pipeline_flags(r, DEFAULT_PIPELINE)
    _add_placement_flags(r)
    # --- runtime hook: flags for bundles (gimlet.runtime)
    r.add_argument("--trace", metavar="OUT.json", help="bundles: write a Chrome/Perfetto trace")
    r.add_argument(
        "--recv-timeout", type=float, metavar="S", help="bundles: seconds per receive (default 60)"
    )
    r.add_argument(
        "--processes",
        choices=["auto", "one", "per-device"],
        default="auto",
        help="bundles: run every segment in this process ('one'), on one worker process per "
        "device ('per-device'), or let gimlet choose ('auto', the default: one process unless "
        "the bundle spans several CPU devices or several GPUs; a --micro-batches pipeline "
        "whose every stage runs compiled on a GPU stays in this process)",
    )
    r.add_argument(
        "--micro-batches",
        type=int,
        default=1,
        metavar="M",
        help="bundles: cut every input into M pieces along its first dim (the bundle was "
        "compiled for one piece) and pipeline them through the devices: from this process "
        "when every stage runs on a GPU (copy-engine copies between GPUs), else one worker "
        "per device (--processes picks either): while one device runs micro-batch j, the "
        "next runs j-1 (default 1: no pipeline)",
    )
    m = sub.add_parser(
        "measure-cpu",
        help="measure this CPU as the C++ backend uses it: a .cluster device statement",
        description=(
            "Measure this machine's CPU through gimlet's C++ backend (its f32 GEMM rate "
            "with its BLAS and thread pool, streaming memory bandwidth, the fixed cost per "
            "op) and print a .cluster `device` statement with those figures, so the cost "
            "model predicts CPU segments for this machine instead of the `cpu` preset (a "
            "56-core Xeon 8480+). Paste it into a .cluster file, or write it with -o and "
            "pass that file as --target. Takes 1-2 s (the first run also compiles the "
            "probe kernels, cached after). Thread count: GIMLET_CPU_THREADS, else "
            "OMP_NUM_THREADS, else the CPUs this process may use, as the backend takes it. "
            "See docs/cluster-language.md, 'Measuring your CPU'."
        ),
    )
    m.add_argument(
        "--name",
        default="cpu0",
        help="the device's name in the statement (default: cpu0, the name --target "
        "presets give the first CPU)",
    )
    m.add_argument(
        "-o",
        "--output",
        metavar="FILE.cluster",
        help="write the statement (a one-device cluster file) here instead of stdout",
    )
    return p


def cmd_measure_cpu(args: argparse.Namespace) -> int:
    from gimlet.measure_cpu import check_device_name, device_statement, measure

    check_device_name(args.name)  # before a second of measuring, not after

    def progress(what: str) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"gimletc: measure-cpu: {what}...\n")

    text = device_statement(measure(progress), args.name)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        sys.stderr.write(f"gimletc: wrote device {args.name} to {args.output}\n")
    else:
        sys.stdout.write(text)
    return 0


def _instrumentation(args: argparse.Namespace) -> Instrumentation:
    def names(values: list[str]) -> set[str]:
        return {n for v in values for n in v.split(",") if n}

    return Instrumentation(
        print_after_all=args.print_ir_after_all,
        print_before=names(args.print_ir_before),
        print_after=names(args.print_ir_after),
        dump_dir=args.dump_dir,
        timing=args.timing,
        locations=not args.no_locations,
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from gimlet.frontend.load import frontend

    start = time.perf_counter()
    with step(f"exporting {args.model}"):
        fe = frontend(
            args.model,
            cache=not args.no_cache,
            note=_note,
            output_key=_output_key(args),
            out_dir=None if args.target else args.output,
        )
    if fe.cached:
        print(
            f"gimletc: export cache: reusing the export of {args.model} from {fe.cached} "
            "(--no-cache exports again)",
            file=sys.stderr,
        )
    # The collector would rescan everything torch.export left behind (a full collection
    # costs ~0.2 s after exporting GPT-2 small): keep it out until the compile is done.
    gc.freeze()
    try:
        return _compile_rest(args, fe, start)
    finally:
        gc.unfreeze()


def _compile_rest(args: argparse.Namespace, fe: Any, start: float) -> int:
    phases = fe.phases
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - clock
        clock = now

    # the weights are written while the passes run, or since before torch.export (a miss:
    # fe.writer); a cache hit links the file it kept
    writer = fe.writer
    if writer is None and not args.target and not fe.has_weights_file:
        writer = WeightsWriter(args.output, fe.weights)
    try:
        return _passes_and_output(args, fe, writer, lap, start)
    finally:
        if writer is not None:
            writer.discard()


def _passes_and_output(
    args: argparse.Namespace,
    fe: Any,
    writer: WeightsWriter | None,
    lap: Callable[[str], None],
    start: float,
) -> int:
    weights, example, phases = fe.weights, fe.example_inputs, fe.phases
    if fe.output is not None:  # the export cache kept this pipeline's final IR: no passes
        text, names, module = fe.output.ir, fe.output.inputs, None
    else:
        module = fe.module
        with step("running passes"):
            verify_program(module, after="import")
            run_pipeline(module, _pipeline(args), _instrumentation(args))
        lap("passes")
        text = print_ir(module, not args.no_locations)
        names = input_names(module)
        lap("print")

    def n_ops() -> int:
        return fe.output.ops if module is None else sum(1 for _ in module.walk())

    def fill(tmp: str) -> None:
        with open(os.path.join(tmp, IR_FILE), "w") as f:
            f.write(text)
        path = os.path.join(tmp, WEIGHTS_FILE)
        if writer is not None:
            writer.move_to(path)
        elif not fe.link_weights(path):
            save_weights(path, weights)
        if example is not None:  # `gimletc run OUT/` runs on these without --inputs
            save_inputs(os.path.join(tmp, INPUTS_FILE), names, example)

    if args.target:  # --- runtime hook: a placed program becomes a bundle (gimlet.bundle)
        from gimlet.bundle import write_bundle

        assert module is not None  # _output_key gives bundles none
        manifest = write_bundle(args.output, module, text, weights, _backend_choices(args))
        lap("write")
        fe.commit()
        _report_backends(manifest)
        runtime, piped = _runtime_choices(args.output, manifest, module)
        print(f"gimletc: {_processes_line(runtime)}", file=sys.stderr)
        pipelined = _pipelined_line(runtime, piped)
        if pipelined:
            print(f"gimletc: {pipelined}", file=sys.stderr)
    else:
        write_atomically(args.output, fill)
        lap("write")
        if writer is not None and writer.reused_ahead:  # on a thread, during torch.export
            phases["weights ahead"] = writer.seconds
        from gimlet.frontend.cache import Output

        fe.commit(
            os.path.join(os.path.abspath(args.output), WEIGHTS_FILE), Output(text, n_ops(), names)
        )
        runtime = None
    if module is not None:
        _explain(args, module, runtime)
    if args.timing:
        total = time.perf_counter() - start
        times = " ".join(f"{k.replace(' ', '-')}={v:.3f}" for k, v in phases.items())
        print(f"gimletc: phase times (s): {times} total={total:.3f}", file=sys.stderr)
    what = "a bundle (manifest.json, per-device weights)" if args.target else WEIGHTS_FILE
    also = f" and {INPUTS_FILE} (example inputs)" if example is not None and not args.target else ""
    print(
        f"gimletc: wrote {os.path.join(args.output, IR_FILE)} ({n_ops()} ops), {what} "
        f"({len(weights)} tensors){also}"
    )
    return 0


def _note(message: str) -> None:
    print(f"gimletc: note: {message}", file=sys.stderr)


def _output_key(args: argparse.Namespace) -> str | None:
    """The export cache's key for this compile's final IR (cache.output_key), None when it
    must run the passes: a bundle (placement, backends), or IR printed or dumped per pass."""
    if args.no_cache or args.target or args.dump_dir or args.print_ir_after_all:
        return None
    if args.print_ir_before or args.print_ir_after:
        return None
    from gimlet.frontend.cache import output_key

    return output_key(args.pass_pipeline, not args.no_locations)


def _backend_choices(args: argparse.Namespace) -> dict[str, str]:
    """--backend KIND=OPTION (repeatable, comma lists allowed) and --cpu-backend OPTION."""
    choices: dict[str, str] = {}
    for item in ",".join(args.backend).split(","):
        if not item.strip():
            continue
        kind, sep, option = item.partition("=")
        if not sep or not kind.strip() or not option.strip():
            raise UserError(f"--backend {item!r}: expected KIND=OPTION, e.g. cpu=interpreter")
        choices[kind.strip()] = option.strip()
    if args.cpu_backend:
        choices["cpu"] = args.cpu_backend
    return choices


def _report_backends(manifest: dict[str, Any]) -> None:
    """One line per device saying what runs its segments, so a fallback is never silent."""
    from gimlet.backends import get, serving

    kinds = {d["name"]: d["kind"] for d in manifest["cluster"]["devices"]}
    for seg in manifest["segments"]:
        art = seg["artefact"]
        what = get(art["kind"]).describe(art)
        if "fallback" in art:
            label = get(art["fallback_from"]).label
            what = f"{what} ({label} cannot compile it: {art['fallback']})"
        elif art["kind"] == "interpreter" and len(serving(kinds[seg["device"]])) > 1:
            what = f"{what} (chosen with --backend or `backend =` in the .cluster file)"
        elif art["kind"] == "interpreter":
            what = f"{what} (no backend for this device kind yet)"
        # stderr: stdout may be a machine-read --explain=json report
        print(f"gimletc: segment {seg['index']} on {seg['device']}: {what}", file=sys.stderr)


def _runtime_choices(
    out: str, manifest: dict[str, Any], module: ModuleOp
) -> tuple[tuple[str, str], tuple[str, str]]:
    """How `gimlet.load` / `gimletc run` will run the bundle (processes="auto"): a plain
    call, and a pipeline (micro_batches > 1)."""
    from gimlet.runtime.bundle import Bundle
    from gimlet.runtime.inprocess import choose_processes, sequential_order_problem

    bundle = Bundle(os.path.abspath(out), manifest)
    problem = sequential_order_problem(module)
    return choose_processes(bundle, "auto", problem), choose_processes(bundle, "auto", problem, 2)


def _pipelined_line(plain: tuple[str, str], pipelined: tuple[str, str]) -> str | None:
    """What changes with micro-batches, when the pipeline runs elsewhere than a plain call."""
    if pipelined[0] == plain[0]:
        return None
    where = "in this process" if pipelined[0] == "one" else "on one worker process per device"
    return f"with --micro-batches M (micro_batches=M) it runs {where} ({pipelined[1]})"


def _processes_line(runtime: tuple[str, str]) -> str:
    processes, why = runtime
    if processes == "one":
        return f"gimlet.load and gimletc run run this bundle in one process ({why})"
    return (
        f"gimletc run runs this bundle on one worker process per device ({why}); gimlet.load "
        "keeps the host's share in the calling process when every channel is shared memory"
    )


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    with open(path) as f:
        return f.read()


def cmd_opt(args: argparse.Namespace) -> int:
    build_pipeline(args.pass_pipeline)  # reject a bad pipeline before reading any input
    text = _read(args.file)
    chunks = _split(text) if args.split_input_file else [text]
    outputs, failed = [], False
    for chunk in chunks:
        try:
            module = parse(chunk, args.file)
            verify_program(module)
            run_pipeline(module, args.pass_pipeline, _instrumentation(args))
            outputs.append(print_ir(module, not args.no_locations))
        except UserError as e:
            if not args.split_input_file:
                raise
            sys.stderr.write(f"gimletc: error: {e}\n")
            failed = True
    result = "// -----\n".join(outputs)
    if args.output:
        with open(args.output, "w") as f:
            f.write(result)
    else:
        sys.stdout.write(result)
    return 1 if failed else 0


def _split(text: str) -> list[str]:
    """Chunks between `// -----` lines, padded with blank lines to keep line numbers."""
    chunks: list[str] = []
    current: list[str] = []
    for line_no, line in enumerate(text.splitlines(keepends=True)):
        if line.strip() == "// -----":
            chunks.append("".join(current))
            current = ["\n"] * (line_no + 1)
        else:
            current.append(line)
    chunks.append("".join(current))
    return chunks


def cmd_run(args: argparse.Namespace) -> int:
    from gimlet.interpreter import run

    example: list[np.ndarray] | None = None
    target = args.source
    from gimlet.runtime.bundle import is_bundle

    if is_bundle(target):  # --- runtime hook: one worker process per device
        from gimlet.runtime.cli import run_bundle

        return run_bundle(args)
    if os.path.isdir(target):
        module = parse(_read(os.path.join(target, IR_FILE)), os.path.join(target, IR_FILE))
        weights = load_weights(args.weights or os.path.join(target, WEIGHTS_FILE))
        if os.path.isfile(os.path.join(target, INPUTS_FILE)):  # what `compile` kept
            example = _load_inputs(os.path.join(target, INPUTS_FILE), module)
    elif target.endswith(".mlir"):
        module = parse(_read(target), target)
        weights = load_weights(args.weights) if args.weights else {}
    else:
        from gimlet.dtypes import torch_to_numpy
        from gimlet.frontend.load import decompose, export, load_factory, load_program

        if target.endswith(".pt2"):
            ep = load_program(target)
        else:
            model, example_inputs, dyn = load_factory(target)
            example = [torch_to_numpy(t) for t in example_inputs]
            ep = export(model, example_inputs, dyn)
        from gimlet.frontend.importer import import_program

        module, weights = import_program(decompose(ep))
    verify_program(module)
    run_pipeline(module, _pipeline(args), _instrumentation(args))
    _explain(args, module)
    inputs = _load_inputs(args.inputs, module) if args.inputs else example
    if inputs is None:
        raise UserError(f"{target}: no inputs; pass --inputs INPUTS.npz")
    outputs = run(module, inputs, weights)
    if args.output:
        save_outputs(args.output, outputs)
    sys.stdout.write(format_outputs(outputs))
    return 0


def _load_inputs(path: str, module: ModuleOp) -> list[np.ndarray]:
    """An .npz of inputs; bf16 inputs may be stored as their bits (uint16)."""
    import ml_dtypes
    from xdsl.dialects.builtin import BFloat16Type, TensorType

    from gimlet.ir import main_func

    arrays = read_inputs(path, input_names(module))
    for i, t in enumerate(main_func(module).function_type.inputs.data):
        bf16 = isinstance(t, TensorType) and isinstance(t.element_type, BFloat16Type)
        if bf16 and arrays[i].dtype == np.uint16:
            arrays[i] = arrays[i].view(ml_dtypes.bfloat16)
    return arrays


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.debug:  # torch's deprecation chatter would bury the one line that matters
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
    if args.list_passes:
        print("Available passes:\n" + list_passes())
        return 0
    if args.command is None:
        _parser().print_help()
        return 1
    try:
        commands = {
            "compile": cmd_compile,
            "opt": cmd_opt,
            "run": cmd_run,
            "measure-cpu": cmd_measure_cpu,
        }
        return commands[args.command](args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"gimletc: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in gimlet, not in the user's input
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(
            f"gimletc: internal error: {type(e).__name__}: {e}\n(rerun with --debug for the traceback)\n"
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
