"""`gimletc run BUNDLE/`: kept here so compiler/cli.py only needs a two-line hook."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from gimlet.errors import UserError


def run_bundle(args: argparse.Namespace) -> int:
    from gimlet.bundle import load_bundle
    from gimlet.runtime.launch import launch
    from gimlet.runtime.trace import summary_table, write_trace

    bundle = load_bundle(args.source)
    if not args.inputs:
        raise UserError(f"{args.source}: no inputs; pass --inputs INPUTS.npz")
    inputs = _read_inputs(args.inputs, [s["name"] for s in bundle.manifest["inputs"]])
    result = launch(
        args.source, inputs, target=args.target, timeout_s=getattr(args, "recv_timeout", None)
    )
    if args.output:
        named: dict[str, Any] = {f"out{i}": o for i, o in enumerate(result.outputs)}
        np.savez(args.output, **named)
    for i, o in enumerate(result.outputs):
        print(f"out{i}: {o.dtype} {list(o.shape)} {np.array2string(o.ravel()[:6], precision=5)}")
    if getattr(args, "trace", None):
        write_trace(args.trace, result.stats)
    sys.stderr.write(summary_table(result.stats))
    sys.stderr.write(f"wall {result.wall_s * 1e3:.0f} ms, {len(bundle.devices)} workers\n")
    return 0


def _read_inputs(path: str, names: list[str]) -> list[np.ndarray]:
    import os

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        data = np.load(path)
    except Exception as e:
        raise UserError(f"{path}: not an .npz file ({e})") from e
    for keys in (names, [f"arr_{i}" for i in range(len(names))]):
        if all(k in data for k in keys):
            return [data[k] for k in keys]
    raise UserError(
        f"{path}: expected arrays named {', '.join(names)} (or arr_0..), found {', '.join(data.files)}"
    )
