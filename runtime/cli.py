"""`gimletc run BUNDLE/`: kept here so compiler/cli.py only needs a two-line hook."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gimlet.artifacts import format_outputs, read_inputs, save_outputs
from gimlet.errors import UserError


def run_bundle(args: argparse.Namespace) -> int:
    from gimlet.backends.report import format_report, run_report
    from gimlet.runtime.bundle import check_cluster, check_inputs, load_bundle
    from gimlet.runtime.inprocess import plan_processes
    from gimlet.runtime.launch import launch
    from gimlet.runtime.pipeline import check_count
    from gimlet.runtime.trace import summary_table, write_trace

    bundle = load_bundle(args.source)
    if not args.inputs:
        raise UserError(f"{args.source}: no inputs; pass --inputs INPUTS.npz")
    if args.target:
        check_cluster(bundle, args.target)
    inputs = read_inputs(args.inputs, [s["name"] for s in bundle.manifest["inputs"]])
    micro = getattr(args, "micro_batches", 1)
    check_count(micro)  # 0 is refused, not taken for the default
    requested = getattr(args, "processes", None) or "auto"
    if micro == 1:  # (a pipeline checks each micro-batch when it cuts them)
        check_inputs(bundle, inputs)
    processes, reason, module = plan_processes(bundle, requested, micro)
    if micro > 1:
        reason = f"{micro} micro-batches pipelined, {reason}"
    n = len(bundle.devices)
    # what runs each segment here, and why where it is not what gimletc compile chose
    sys.stderr.write(format_report(run_report(bundle.manifest), "gimletc"))
    if processes == "one":
        sys.stderr.write(f"gimletc: running in this process ({reason})\n")
        outputs, stats, wall = _in_process(bundle, module, inputs, micro)
        how = "1 process (no workers)"
    else:
        sys.stderr.write(
            f"gimletc: running on {n} worker process{'es' if n > 1 else ''} ({reason})\n"
        )
        timeout = getattr(args, "recv_timeout", None)
        result = launch(args.source, inputs, timeout_s=timeout, target=None, micro_batches=micro)
        outputs, stats, wall = result.outputs, result.stats, result.wall_s
        how = f"{n} worker{'' if n == 1 else 's'}"
    if args.output:
        save_outputs(args.output, outputs)
    sys.stdout.write(format_outputs(outputs))
    if getattr(args, "trace", None):
        write_trace(args.trace, stats)
    sys.stderr.write(summary_table(stats))
    sys.stderr.write(f"wall {wall * 1e3:.0f} ms, {how}\n")
    return 0


def _in_process(
    bundle: Any, module: Any, inputs: list[Any], micro: int
) -> tuple[list[Any], list[Any], float]:
    from gimlet.runtime.inprocess import InProcess, to_host

    start = time.time()
    run = InProcess(bundle, stats=True, module=module, micro_batches=micro)
    outputs = [to_host(t) for t in run(*inputs)]
    return outputs, run.take_stats(), time.time() - start
