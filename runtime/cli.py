"""`gimletc run BUNDLE/`: kept here so compiler/cli.py only needs a two-line hook."""

from __future__ import annotations

import argparse
import sys

from gimlet.artifacts import format_outputs, read_inputs, save_outputs
from gimlet.errors import UserError


def run_bundle(args: argparse.Namespace) -> int:
    from gimlet.runtime.bundle import load_bundle
    from gimlet.runtime.launch import launch
    from gimlet.runtime.trace import summary_table, write_trace

    bundle = load_bundle(args.source)
    if not args.inputs:
        raise UserError(f"{args.source}: no inputs; pass --inputs INPUTS.npz")
    inputs = read_inputs(args.inputs, [s["name"] for s in bundle.manifest["inputs"]])
    result = launch(
        args.source, inputs, target=args.target, timeout_s=getattr(args, "recv_timeout", None)
    )
    if args.output:
        save_outputs(args.output, result.outputs)
    sys.stdout.write(format_outputs(result.outputs))
    if getattr(args, "trace", None):
        write_trace(args.trace, result.stats)
    sys.stderr.write(summary_table(result.stats))
    n = len(bundle.devices)
    sys.stderr.write(f"wall {result.wall_s * 1e3:.0f} ms, {n} worker{'' if n == 1 else 's'}\n")
    return 0
