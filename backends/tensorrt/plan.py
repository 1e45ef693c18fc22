"""The engine build plan of a segment: what build_engine.py and trtexec need per part.

Precision: `fp16`/`bf16` are set when the part's tensors have those element types (a
weakly typed network then may run them in 16 bits; f32 parts keep f32, TF32 off).
Profiles: every input with a dynamic dim gets min/opt/max. They come from the model's
torch.export Dim bounds, which the importer keeps in the IR, evaluated through the
program to each part's inputs (profile.py); the plan's `dims` lists each symbol's range.
A dim without known bounds (IR written by hand, a size the evaluation cannot follow)
takes `DEFAULT_RANGE`, and the plan's `defaults` says which inputs did; a user edits the
ranges in the plan to fit the sizes served.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from .lower import OPSET, OnnxPart, Port
from .profile import DEFAULT_RANGE, DimRange, Profile
from .support import SOURCE, TENSORRT_VERSION

FORMAT = 1
DEFAULT_WHY = (
    "a dynamic dim without torch.export Dim bounds (IR without gml.dims, or a size gimlet "
    "could not follow to this part) gets min 1, opt 64, max 2048; edit min/opt/max below to "
    "the sizes you serve (related sizes, e.g. a carrier of 2*seq, must stay consistent at opt)"
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


def _profile(port: Port, profile: Profile | None) -> dict[str, Any]:
    entry = port.to_json()
    if -1 not in port.shape:
        return entry
    if profile is not None:
        entry["min"], entry["opt"], entry["max"] = (list(s) for s in profile)
        entry["from"] = "torch.export"
        return entry
    lo, opt, hi = DEFAULT_RANGE
    entry["min"] = [lo if d == -1 else d for d in port.shape]
    entry["opt"] = [opt if d == -1 else d for d in port.shape]
    entry["max"] = [hi if d == -1 else d for d in port.shape]
    entry["from"] = "defaults"
    return entry


def make_plan(
    index: int,
    parts: list[tuple[str, str, OnnxPart]],
    profiles: Sequence[Sequence[Profile | None]] | None = None,
    dims: Mapping[str, DimRange] | None = None,
) -> dict[str, Any]:
    """The plan of segment `index`: (onnx file, data file, lowered part) per part, paths
    relative to the bundle; `profiles[k][i]`: the min/opt/max shapes of part k's input i
    (profile.profiles), None for the defaults; `dims`: the symbols' ranges they came from."""
    entries: list[dict[str, Any]] = []
    for k, (onnx_file, data_file, part) in enumerate(parts):
        stem = onnx_file.rsplit("/", 1)[-1].removesuffix(".onnx")
        known = profiles[k] if profiles is not None else [None] * len(part.inputs)
        entries.append(
            {
                "onnx": onnx_file,
                "data": data_file,
                "engine": f"{stem}.engine",
                "precision": precision(part),
                "tf32": False,
                "inputs": [_profile(p, pr) for p, pr in zip(part.inputs, known, strict=True)],
                "outputs": [p.to_json() for p in part.outputs],
            }
        )
    return {
        "format": FORMAT,
        "segment": index,
        "opset": OPSET,
        "operator_matrix": f"TensorRT {TENSORRT_VERSION}: {SOURCE}",
        "dims": {name: r.to_json() for name, r in (dims or {}).items()},
        "defaults": {
            "min": DEFAULT_RANGE[0],
            "opt": DEFAULT_RANGE[1],
            "max": DEFAULT_RANGE[2],
            "why": DEFAULT_WHY,
            "inputs": [
                f"{e['engine'].removesuffix('.engine')}:{i['name']}"
                for e in entries
                for i in e["inputs"]
                if i.get("from") == "defaults"
            ],
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
    dims = ", ".join(
        f"{n} {r['min']}..{r['max']} (opt {r['opt']})" for n, r in plan["dims"].items()
    )
    lines = [
        "#!/bin/sh",
        f"# Segment {plan['segment']}: the TensorRT engines of build_engine.py, built with trtexec.",
        f"# Dynamic dims from torch.export's bounds: {dims or 'none'}.",
    ]
    if plan["defaults"]["inputs"]:
        lines.append(
            f"# Defaults for {', '.join(plan['defaults']['inputs'])}: {plan['defaults']['why']}."
        )
    lines += ['cd "$(dirname "$0")" || exit 1', "set -e"]
    for part in plan["parts"]:
        lines.append(" ".join(shlex.quote(a) for a in trtexec_command(part)))
    return "\n".join(lines) + "\n"
