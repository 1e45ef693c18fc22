#!/usr/bin/env python3
"""Build TensorRT engines for the ONNX models gimlet wrote into a bundle.

    python trt/build_engine.py trt/seg0.plan.json [--out DIR] [--timing-cache FILE]

The plan (JSON, written by `gimletc compile --backend nvidia=tensorrt`) lists each part
of a segment: its ONNX model (weights in the .data file beside it), the precision flags
its element types need (fp16/bf16; TF32 stays off so f32 parts compute in f32, as the
CUDA backend does), and for every input with a dynamic dim one optimization-profile entry
(min/opt/max). The dynamic ranges are the plan's `defaults` unless gimlet knew better;
edit them in the plan to fit your sizes. Engines are written as `<part>.engine` into DIR
(default: beside the plan), and the timing cache is kept in DIR/timing.cache, so a
rebuild reuses the kernel timings. The `<segment>.trtexec.sh` beside the plan runs the
same builds with trtexec.

This file only needs Python and TensorRT (8.6 or 10.x); gimlet's runtime uses the same
`build_part` to build engines it caches by content hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def build_part(part: dict[str, Any], root: Path, timing_cache: Path | None = None) -> bytes:
    """The serialized engine of one plan entry; ONNX paths are relative to `root`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode in 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    model = root / part["onnx"]
    if not parser.parse_from_file(str(model)):  # reads the external data beside it
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {model}:\n{errors}")
    config = builder.create_builder_config()
    if "fp16" in part["precision"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if "bf16" in part["precision"]:
        config.set_flag(trt.BuilderFlag.BF16)
    if not part.get("tf32", False):
        config.clear_flag(trt.BuilderFlag.TF32)
    dynamic = [i for i in part["inputs"] if -1 in i["shape"]]
    if dynamic:  # one profile: min/opt/max for every input with a dynamic dim
        profile = builder.create_optimization_profile()
        for i in dynamic:
            profile.set_shape(i["name"], i["min"], i["opt"], i["max"])
        config.add_optimization_profile(profile)
    if timing_cache is not None:
        old = timing_cache.read_bytes() if timing_cache.exists() else b""
        config.set_timing_cache(config.create_timing_cache(old), ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT could not build an engine for {model} (see its log above)")
    if timing_cache is not None:
        write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(engine)


def write_atomically(path: Path, data: bytes) -> None:
    """Concurrent builders (one per worker) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("plan", type=Path, help="a <segment>.plan.json gimlet wrote")
    p.add_argument("--out", type=Path, help="where engines go (default: beside the plan)")
    p.add_argument("--timing-cache", type=Path, help="default: OUT/timing.cache")
    args = p.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    root = args.plan.resolve().parent.parent  # plan paths are relative to the bundle
    out = args.out or args.plan.resolve().parent
    cache = args.timing_cache or out / "timing.cache"
    for part in plan["parts"]:
        engine = out / part["engine"]
        write_atomically(engine, build_part(part, root, cache))
        print(f"wrote {engine}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
