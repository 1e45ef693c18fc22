"""Bundles: a self-describing directory a multi-process run can start from.

`gimletc compile MODEL --target T -o OUT/` writes

    OUT/manifest.json            devices, segments (+ artefact each), channels, signature,
                                 gimlet version, sha256 of every other file
    OUT/model.mlir               the final IR (the interpreter artefact of every segment)
    OUT/weights/<device>.safetensors   only the weights that device's ops read

Why a manifest rather than re-deriving everything from the IR: the launcher must reject
a wrong cluster, a tampered file or bad inputs *before* it starts any worker, and it
should not need to parse IR (slow) to do so. Workers still parse the IR to execute it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp, StringAttr, TensorType
from xdsl.ir import Attribute

from gimlet import __version__
from gimlet.artifacts import IR_FILE, save_weights, write_atomically
from gimlet.dialects import comm, gml
from gimlet.dialects.shapes import DYN, shape_of
from gimlet.errors import UserError

MANIFEST_FILE = "manifest.json"
WEIGHTS_DIR = "weights"
FORMAT = 1


class BundleError(UserError):
    """A bundle that is missing, tampered with, or built for another cluster."""


def is_bundle(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_FILE))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _type_sig(t: Attribute) -> dict[str, Any]:
    """A tensor type as {dtype, shape} (-1 for `?`), an index as {dtype: index}."""
    from gimlet.interpreter import dtype_for

    if not isinstance(t, TensorType):
        return {"dtype": "index", "shape": []}
    return {
        "dtype": dtype_for(t.element_type).name,
        "shape": [-1 if d == DYN else int(d) for d in shape_of(t)],
    }


GPU_KINDS = ("nvidia", "amd")  # NCCL (RCCL on ROCm builds of torch) between two of a kind


def _nccl_ordered_pairs(module: ModuleOp, host: str) -> set[tuple[str, str]]:
    """Device pairs whose tensor transfers NCCL can carry. NCCL ignores tags and matches a
    pair's sends and receives in the order they are issued, so the sender's payload sends
    must come in the same channel order as the receiver posts its payload receives (at
    the irecv for static shapes; at the wait, after the gloo shape header, for dynamic
    ones). `index` values always go through gloo and do not count."""
    from gimlet.comm_check import device_ops

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


def _device_info(cluster: Any) -> list[dict[str, str]]:
    return [{"name": d.name, "kind": d.kind, "model": d.model} for d in cluster.devices.values()]


def _params(op: Any) -> set[str]:
    return {o.param_name.data for o in op.walk() if isinstance(o, gml.ParamOp)}


def describe(module: ModuleOp) -> dict[str, Any]:
    """The manifest body (everything but file hashes) for a placed, partitioned module."""
    from gimlet.ir import input_names, main_func
    from gimlet.passes.insert_comm import TARGET_ATTR, module_cluster

    target = module.attributes.get(TARGET_ATTR)
    assert isinstance(target, StringAttr)
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
        "target": target.data,
        "cluster": {"devices": _device_info(cluster), "host": host},
        "segments": segments,
        "channels": sorted(channels, key=lambda c: c["id"]),
        "inputs": [
            {"name": n, **_type_sig(t)}
            for n, t in zip(names, fn.function_type.inputs.data, strict=True)
        ],
        "outputs": [_type_sig(t) for t in fn.function_type.outputs.data],
        "_host_params": sorted(host_params),
    }


BACKENDS = ("cxx", "interpreter")


def write_bundle(
    out_dir: str,
    module: ModuleOp,
    ir_text: str,
    weights: dict[str, Any],
    cpu_backend: str = "cxx",
) -> dict[str, Any]:
    """Write a bundle atomically and return its manifest; each device's weight file holds
    only what it reads. With cpu_backend="cxx", segments on CPU devices are compiled to
    C++ libraries (backends/cpu/bundle.py); one the backend cannot lower stays on the
    interpreter, its manifest entry saying why ("fallback")."""
    from gimlet.ir import main_func

    manifest = describe(module)
    host = manifest["cluster"]["host"]
    per_device: dict[str, set[str]] = {d["name"]: set() for d in manifest["cluster"]["devices"]}
    per_device[host] |= set(manifest.pop("_host_params"))
    for op in main_func(module).body.block.ops:
        if isinstance(op, gml.SegmentOp):
            per_device[op.device.data] |= _params(op)

    def fill(tmp: str) -> None:
        files: dict[str, str] = {}
        with open(os.path.join(tmp, IR_FILE), "w") as f:
            f.write(ir_text)
        files[IR_FILE] = _sha256(os.path.join(tmp, IR_FILE))
        if cpu_backend == "cxx":
            _compile_cpu_segments(tmp, module, manifest)
        for seg in manifest["segments"]:
            for part in seg["artefact"].get("parts", []):
                for rel in (part["source"], part["library"], seg["artefact"]["header"]):
                    files[rel] = _sha256(os.path.join(tmp, rel))
        os.makedirs(os.path.join(tmp, WEIGHTS_DIR))
        manifest["weights"] = {}
        for dev, names in per_device.items():
            rel = f"{WEIGHTS_DIR}/{dev}.safetensors"
            save_weights(os.path.join(tmp, rel), {n: np.asarray(weights[n]) for n in sorted(names)})
            files[rel] = _sha256(os.path.join(tmp, rel))
            manifest["weights"][dev] = rel
        manifest["files"] = files
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")

    write_atomically(out_dir, fill)
    return manifest


def _compile_cpu_segments(tmp: str, module: ModuleOp, manifest: dict[str, Any]) -> None:
    from gimlet.backends.cpu.bundle import compile_module_segments

    cpus = {d["name"] for d in manifest["cluster"]["devices"] if d["kind"] == "cpu"}
    artefacts, fallbacks = compile_module_segments(module, tmp, cpus)
    for seg in manifest["segments"]:
        if seg["index"] in artefacts:
            seg["artefact"] = artefacts[seg["index"]]
        elif seg["index"] in fallbacks:
            seg["artefact"]["fallback"] = fallbacks[seg["index"]]


@dataclass
class Bundle:
    path: str
    manifest: dict[str, Any]

    @property
    def devices(self) -> list[str]:
        return [d["name"] for d in self.manifest["cluster"]["devices"]]

    @property
    def host(self) -> str:
        return str(self.manifest["cluster"]["host"])

    def file(self, rel: str) -> str:
        return os.path.join(self.path, rel)


def load_bundle(path: str, verify_hashes: bool = True) -> Bundle:
    """Read the manifest and (by default) check every listed file's sha256."""
    mpath = os.path.join(path, MANIFEST_FILE)
    if not os.path.isfile(mpath):
        raise BundleError(f"{path}: not a bundle (no {MANIFEST_FILE})")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{mpath}: bundle format {got}, expected {FORMAT}")
    check_manifest(manifest, mpath)
    if verify_hashes:
        for rel, digest in manifest["files"].items():
            fpath = os.path.join(path, rel)
            if not os.path.isfile(fpath):
                raise BundleError(f"{path}: bundle file {rel} is missing")
            if _sha256(fpath) != digest:
                raise BundleError(
                    f"{path}: bundle file {rel} does not match its manifest hash (modified or "
                    "corrupted); rebuild the bundle with gimletc compile"
                )
    return Bundle(os.path.abspath(path), manifest)


class _Shape:
    """Reads one manifest field, or raises a BundleError naming it (`segments[1].device`)."""

    def __init__(self, where: str):
        self.where = where

    def get(self, obj: Any, key: str | int, typ: type | tuple[type, ...], path: str) -> Any:
        here = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip(".")
        try:
            value = obj[key]
        except (KeyError, IndexError, TypeError):
            raise BundleError(f"{self.where}: malformed manifest: no {here}") from None
        if not isinstance(value, typ) or isinstance(value, bool) and typ is int:
            want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise BundleError(
                f"{self.where}: malformed manifest: {here} should be {want}, "
                f"not {type(value).__name__}"
            )
        return value

    def items(self, obj: Any, key: str, path: str = "") -> list[tuple[str, dict[str, Any]]]:
        seq = self.get(obj, key, list, path)
        where = f"{path}.{key}".lstrip(".")
        return [(f"{where}[{i}]", self.get(seq, i, dict, where)) for i in range(len(seq))]


def check_manifest(m: dict[str, Any], where: str) -> None:
    """Every field a launcher or worker reads exists, has its type and points inside the
    bundle, so a hand-edited or truncated manifest fails here with one message rather
    than as a KeyError in some worker."""
    from gimlet.runtime.executor import EXECUTORS

    f = _Shape(where)
    cluster = f.get(m, "cluster", dict, "")
    names = [f.get(d, "name", str, p) for p, d in f.items(cluster, "devices", "cluster")]
    for p, d in f.items(cluster, "devices", "cluster"):
        f.get(d, "kind", str, p)
    if not names or f.get(cluster, "host", str, "cluster") not in names:
        raise BundleError(f"{where}: malformed manifest: cluster.host is not one of its devices")
    files = f.get(m, "files", dict, "")
    referenced = list(f.get(m, "weights", dict, "").values())
    if set(f.get(m, "weights", dict, "")) != set(names):
        raise BundleError(f"{where}: malformed manifest: weights should name every device")
    for p, seg in f.items(m, "segments"):
        if f.get(seg, "device", str, p) not in names:
            raise BundleError(f"{where}: malformed manifest: {p}.device is not a cluster device")
        f.get(seg, "index", int, p)
        f.get(seg, "ops", int, p)
        art = f.get(seg, "artefact", dict, p)
        kind = f.get(art, "kind", str, f"{p}.artefact")
        if kind not in EXECUTORS:
            raise BundleError(
                f"{where}: {p} has artefact kind {kind!r}; this gimlet runs "
                f"{', '.join(sorted(EXECUTORS))}"
            )
        referenced.append(f.get(art, "file", str, f"{p}.artefact"))
        if kind == "cpu-cxx":
            f.get(art, "flags", list, f"{p}.artefact")
            referenced.append(f.get(art, "header", str, f"{p}.artefact"))
            for q, part in f.items(art, "parts", f"{p}.artefact"):
                referenced += [f.get(part, k, str, q) for k in ("source", "library")]
                f.get(part, "weights", list, q)
    for p, c in f.items(m, "channels"):
        f.get(c, "id", int, p)
        f.get(c, "dtype", str, p)
        f.get(c, "shape", list, p)
        if f.get(c, "from", str, p) not in names or f.get(c, "to", str, p) not in names:
            raise BundleError(f"{where}: malformed manifest: {p} joins unknown devices")
    for p, sig in f.items(m, "inputs"):
        f.get(sig, "name", str, p)
        f.get(sig, "dtype", str, p)
        f.get(sig, "shape", list, p)
    f.get(m, "outputs", list, "")
    for rel in [*files, *referenced]:
        if not isinstance(rel, str) or os.path.isabs(rel) or ".." in rel.split("/"):
            raise BundleError(f"{where}: malformed manifest: file {rel!r} is outside the bundle")
    unhashed = sorted(set(referenced) - set(files))
    if unhashed:
        raise BundleError(f"{where}: malformed manifest: {unhashed[0]} has no hash in files")


def check_cluster(bundle: Bundle, target: str) -> None:
    """Refuse to run a bundle on a cluster other than the one it was built for."""
    from gimlet.passes.place import resolve

    built = bundle.manifest["cluster"]["devices"]
    wanted = _device_info(resolve(target))
    if built == wanted:
        return

    def fmt(devs: list[dict[str, str]]) -> str:
        return ", ".join(
            f"{d['name']}:{d['kind']}" + (f"/{d['model']}" if d["model"] else "") for d in devs
        )

    names_b, names_w = [d["name"] for d in built], [d["name"] for d in wanted]
    if names_b != names_w:
        why = f"devices differ ({', '.join(names_b)} vs {', '.join(names_w)})"
    else:
        diff = next(b for b, w in zip(built, wanted, strict=True) if b != w)
        why = f"device {diff['name']} differs"
    raise BundleError(
        f"bundle built for {bundle.manifest['target']} (devices {fmt(built)}) cannot run on "
        f"{target} (devices {fmt(wanted)}): {why}"
    )


def check_inputs(bundle: Bundle, inputs: list[np.ndarray]) -> None:
    """Reject inputs that do not fit the signature, before any worker starts."""
    sig = bundle.manifest["inputs"]
    if len(inputs) != len(sig):
        raise BundleError(f"the bundle takes {len(sig)} inputs, got {len(inputs)}")
    for s, x in zip(sig, inputs, strict=True):
        shape = s["shape"]
        ok = (
            x.dtype.name == s["dtype"]
            and x.ndim == len(shape)
            and all(d in (-1, n) for d, n in zip(shape, x.shape, strict=True))
        )
        if not ok:
            want = "x".join("?" if d == -1 else str(d) for d in shape)
            raise BundleError(
                f"input {s['name']}: expected {s['dtype']} [{want}], got {x.dtype.name} "
                f"array of shape {list(x.shape)}"
            )
