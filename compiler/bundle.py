"""Writing bundles: a self-describing directory a multi-process run can start from.

`gimletc compile MODEL --target T -o OUT/` writes

    OUT/manifest.json            devices, segments (+ artefact each), channels, signature,
                                 gimlet version, sha256 of every other file
    OUT/model.mlir               the final IR (the interpreter artefact of every segment)
    OUT/weights/<device>.safetensors   only the weights that device's ops read

The manifest's format and its reader live with the runtime (gimlet.runtime.bundle), which
must not import the compiler; this module only writes what that reader accepts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Attribute

from gimlet.artifacts import IR_FILE, save_weights, write_atomically
from gimlet.backends import get as get_backend
from gimlet.backends import select as select_backend
from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.errors import UnsupportedOpError
from gimlet.runtime.bundle import (
    FORMAT,
    GPU_KINDS,
    MANIFEST_FILE,
    WEIGHTS_DIR,
    device_info,
    manifest_reader,
    sha256,
)
from gimlet.version import __version__


def _type_sig(t: Attribute) -> dict[str, Any]:
    """A tensor type as {dtype, shape} (-1 for `?`), an index as {dtype: index}."""
    from gimlet.interpreter import dtype_for

    if not isinstance(t, TensorType):
        return {"dtype": "index", "shape": []}
    return {
        "dtype": dtype_for(t.element_type).name,
        "shape": [-1 if d == DYN else int(d) for d in shape_of(t)],
    }


def _nccl_ordered_pairs(module: ModuleOp, host: str) -> set[tuple[str, str]]:
    """Device pairs whose tensor transfers NCCL can carry. NCCL ignores tags and matches a
    pair's sends and receives in the order they are issued, so the sender's payload sends
    must come in the same channel order as the receiver posts its payload receives (at
    the irecv for static shapes; at the wait, after the gloo shape header, for dynamic
    ones). `index` values always go through gloo and do not count."""
    from gimlet.placement.comm_check import device_ops

    sent: dict[tuple[str, str], list[int]] = {}
    posted: dict[tuple[str, str], list[int]] = {}
    for device, op in device_ops(module, host):
        if isinstance(op, comm.SendOp | comm.ISendOp) and isinstance(op.value.type, TensorType):
            sent.setdefault((device, op.peer.data), []).append(op.channel.value.data)
            continue
        start = op.token.owner if isinstance(op, comm.WaitOp) else op
        if not isinstance(start, comm.RecvOp | comm.IRecvOp):
            continue
        t = _received_type(start)
        dynamic = isinstance(t, TensorType) and DYN in shape_of(t)
        posts_payload = isinstance(start, comm.RecvOp) or (op is start) != dynamic
        if isinstance(t, TensorType) and posts_payload:
            posted.setdefault((start.peer.data, device), []).append(start.channel.value.data)
    return {pair for pair, order in sent.items() if posted.get(pair, []) == order}


def _received_type(op: comm.RecvOp | comm.IRecvOp) -> Attribute | None:
    if isinstance(op, comm.RecvOp):
        return op.result.type
    wait = next((u.operation for u in op.token.uses), None)
    return wait.value.type if isinstance(wait, comm.WaitOp) and wait.value else None


def _params(op: Any) -> set[str]:
    return {o.param_name.data for o in op.walk() if isinstance(o, gml.ParamOp)}


def describe(module: ModuleOp) -> dict[str, Any]:
    """The manifest body (everything but file hashes) for a placed, partitioned module."""
    from gimlet.ir import input_names, main_func
    from gimlet.placement.target import module_cluster, module_target

    target = module_target(module)
    assert target is not None
    cluster = module_cluster(module)
    host = cluster.default_host()
    fn = main_func(module)
    segments: list[dict[str, Any]] = []
    channels: list[dict[str, Any]] = []
    host_params: set[str] = set()
    for op in fn.body.block.ops:
        if isinstance(op, gml.SegmentOp):
            segments.append(
                {
                    "index": len(segments),
                    "device": op.device.data,
                    "ops": sum(1 for _ in op.body.block.ops) - 1,
                    "artefact": {"kind": "interpreter", "file": IR_FILE},
                }
            )
        elif not isinstance(op, comm.SendOp | comm.ISendOp | comm.RecvOp | comm.IRecvOp):
            host_params |= _params(op)
    kinds = {d.name: d.kind for d in cluster.devices.values()}
    nccl_pairs = _nccl_ordered_pairs(module, host)
    for op in fn.walk():
        if isinstance(op, comm.SendOp | comm.ISendOp):
            parent = op.parent_op()
            src = parent.device.data if isinstance(parent, gml.SegmentOp) else host
            dst = op.peer.data
            gpu_pair = kinds[src] == kinds[dst] and kinds[src] in GPU_KINDS
            direct = op.transport.data != "host_bounce" and isinstance(op.value.type, TensorType)
            channels.append(
                {
                    "id": op.channel.value.data,
                    "from": src,
                    "to": dst,
                    "transport": op.transport.data,
                    "backend": "nccl"
                    if gpu_pair and direct and (src, dst) in nccl_pairs
                    else "gloo",
                    **_type_sig(op.value.type),
                }
            )
    names = input_names(module)
    return {
        "format": FORMAT,
        "gimlet_version": __version__,
        "target": target,
        "cluster": {"devices": device_info(cluster), "host": host},
        "segments": segments,
        "channels": sorted(channels, key=lambda c: c["id"]),
        "inputs": [
            {"name": n, **_type_sig(t)}
            for n, t in zip(names, fn.function_type.inputs.data, strict=True)
        ],
        "outputs": [_type_sig(t) for t in fn.function_type.outputs.data],
        "_host_params": sorted(host_params),
    }


def write_bundle(
    out_dir: str,
    module: ModuleOp,
    ir_text: str,
    weights: dict[str, Any],
    backends: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write a bundle atomically and return its manifest; each device's weight file holds
    only what it reads. Each segment is compiled by the backend registered for its
    device's kind (gimlet.backends; `backends` maps a device kind to an option name, e.g.
    {"cpu": "interpreter"}, to pick another, over a device's `backend =` in a .cluster
    file). A segment the backend cannot lower stays on the interpreter, its manifest
    entry saying why ("fallback")."""
    from gimlet.ir import main_func

    manifest = describe(module)
    host = manifest["cluster"]["host"]
    per_device: dict[str, set[str]] = {d["name"]: set() for d in manifest["cluster"]["devices"]}
    per_device[host] |= set(manifest.pop("_host_params"))
    segments = [op for op in main_func(module).body.block.ops if isinstance(op, gml.SegmentOp)]
    for op in segments:
        per_device[op.device.data] |= _params(op)
    chosen = _device_backends(module, backends or {})

    def fill(tmp: str) -> None:
        files: dict[str, str] = {}
        with open(os.path.join(tmp, IR_FILE), "w") as f:
            f.write(ir_text)
        files[IR_FILE] = sha256(os.path.join(tmp, IR_FILE))
        _compile_segments(tmp, segments, manifest, chosen, weights)
        read = manifest_reader(f"{out_dir}/{MANIFEST_FILE}")
        for seg in manifest["segments"]:
            art = seg["artefact"]
            for rel in get_backend(art["kind"]).artefact_files(art, read, "artefact"):
                files[rel] = sha256(os.path.join(tmp, rel))
        os.makedirs(os.path.join(tmp, WEIGHTS_DIR))
        manifest["weights"] = {}
        for dev, names in per_device.items():
            rel = f"{WEIGHTS_DIR}/{dev}.safetensors"
            device_weights = {n: np.asarray(weights[n]) for n in sorted(names)}
            # hashed as it is written: reading hundreds of MB back would double the cost
            digest = save_weights(os.path.join(tmp, rel), device_weights, digest=True)
            assert digest is not None
            files[rel] = digest
            manifest["weights"][dev] = rel
        manifest["files"] = files
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")

    write_atomically(out_dir, fill)
    return manifest


def _device_backends(module: ModuleOp, choices: Mapping[str, str]) -> dict[str, str]:
    """Device name -> backend option: `choices` (`--backend KIND=OPTION`) for its kind, else
    the device's `backend =` in its .cluster file; devices with neither are left out."""
    from gimlet.placement.backend_ops import restrict
    from gimlet.placement.target import module_cluster

    devices = restrict(module_cluster(module), choices).devices
    return {name: d.backend for name, d in devices.items() if d.backend}


def _compile_segments(
    bundle_dir: str,
    segments: list[gml.SegmentOp],
    manifest: dict[str, Any],
    chosen: Mapping[str, str],
    weights: Mapping[str, Any],
) -> None:
    """Each segment's artefact entry, from the backend chosen for its device (`chosen`:
    device name -> option) or else its kind's default. Backends get the weights as
    options["weights"] (TensorRT's ONNX models embed them)."""
    devices = {d["name"]: d for d in manifest["cluster"]["devices"]}
    for op, seg in zip(segments, manifest["segments"], strict=True):
        device = devices[seg["device"]]
        option = chosen.get(device["name"])
        backend = select_backend(device["kind"], {device["kind"]: option} if option else {})
        try:
            seg["artefact"] = backend.compile_segment(
                op, seg["index"], bundle_dir, device, {"weights": weights}
            )
        except UnsupportedOpError as e:  # the first line is the op; the rest say why
            why = "; ".join(line.strip() for line in str(e).splitlines()[1:])
            seg["artefact"] = {"kind": "interpreter", "file": IR_FILE}
            seg["artefact"].update(fallback=why, fallback_from=backend.name)
