"""The engine build plan of a segment: what build_engine.py and trtexec need per part.

Precision: `fp16`/`bf16` are set when the part's tensors have those element types (a
weakly typed network then may run them in 16 bits; f32 parts keep f32, TF32 off).
Profiles: every input with a dynamic dim gets min/opt/max. gimlet's IR carries no
torch.export `Dim` bounds (a dynamic dim is `?`), so each dynamic dim takes `DEFAULT_RANGE`;
the plan states that, and a user edits the ranges in the plan to fit the sizes served.
"""

from __future__ import annotations

import shlex
from typing import Any

from .lower import OPSET, OnnxPart, Port
from .support import SOURCE, TENSORRT_VERSION

FORMAT = 1
DEFAULT_RANGE = (1, 64, 2048)  # min, opt, max of a dynamic dim without known bounds
DEFAULT_WHY = (
    "the IR carries no torch.export Dim bounds, so every dynamic dim gets min 1, opt 64, "
    "max 2048; edit min/opt/max below to the sizes you serve (related sizes, e.g. a carrier "
    "of 2*seq, must stay consistent at opt)"
)


def precision(part: OnnxPart) -> list[str]:
    """The builder flags the part's element types need."""
    from onnx import TensorProto

    from .lower import element_types

    types = set(element_types(part.model).values())
    flags = []
    if TensorProto.FLOAT16 in types:
        flags.append("fp16")
    if TensorProto.BFLOAT16 in types:
        flags.append("bf16")
    return flags


def _profile(port: Port) -> dict[str, Any]:
    entry = port.to_json()
    if -1 in port.shape:
        lo, opt, hi = DEFAULT_RANGE
        entry["min"] = [lo if d == -1 else d for d in port.shape]
        entry["opt"] = [opt if d == -1 else d for d in port.shape]
        entry["max"] = [hi if d == -1 else d for d in port.shape]
    return entry


def make_plan(index: int, parts: list[tuple[str, str, OnnxPart]]) -> dict[str, Any]:
    """The plan of segment `index`: (onnx file, data file, lowered part) per part, paths
    relative to the bundle."""
    entries = []
    for onnx_file, data_file, part in parts:
        stem = onnx_file.rsplit("/", 1)[-1].removesuffix(".onnx")
        entries.append(
            {
                "onnx": onnx_file,
                "data": data_file,
                "engine": f"{stem}.engine",
                "precision": precision(part),
                "tf32": False,
                "inputs": [_profile(p) for p in part.inputs],
                "outputs": [p.to_json() for p in part.outputs],
            }
        )
    return {
        "format": FORMAT,
        "segment": index,
        "opset": OPSET,
        "operator_matrix": f"TensorRT {TENSORRT_VERSION}: {SOURCE}",
        "defaults": {
            "min": DEFAULT_RANGE[0],
            "opt": DEFAULT_RANGE[1],
            "max": DEFAULT_RANGE[2],
            "why": DEFAULT_WHY,
        },
        "parts": entries,
    }


def _dims(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(part: dict[str, Any]) -> list[str]:
    """trtexec arguments equivalent to build_engine.build_part for one plan entry (paths
    relative to the bundle's trt/ folder, where the script runs)."""
    cmd = [
        "trtexec",
        f"--onnx={part['onnx'].removeprefix('trt/')}",
        f"--saveEngine={part['engine']}",
    ]
    dynamic = [i for i in part["inputs"] if -1 in i["shape"]]
    for key in ("min", "opt", "max"):
        if dynamic:
            shapes = ",".join(f"{i['name']}:{_dims(i[key])}" for i in dynamic)
            cmd.append(f"--{key}Shapes={shapes}")
    cmd += [f"--{p}" for p in part["precision"]]
    if not part.get("tf32", False):
        cmd.append("--noTF32")
    cmd.append("--timingCacheFile=timing.cache")
    return cmd


def trtexec_script(plan: dict[str, Any]) -> str:
    lines = [
        "#!/bin/sh",
        f"# Segment {plan['segment']}: the TensorRT engines of build_engine.py, built with trtexec.",
        "# Dynamic dims use the plan's ranges: " + plan["defaults"]["why"] + ".",
        'cd "$(dirname "$0")" || exit 1',
        "set -e",
    ]
    for part in plan["parts"]:
        lines.append(" ".join(shlex.quote(a) for a in trtexec_command(part)))
    return "\n".join(lines) + "\n"
