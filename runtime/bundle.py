"""Reading a bundle: the manifest's format, its validation, and checks a launcher runs
before any worker starts.

The writer (`gimlet.bundle`, in the compiler) imports the names defined here, so a manifest
is described once; the runtime never imports the compiler to read one.

Why a manifest rather than re-deriving everything from the IR: the launcher must reject
a wrong cluster, a tampered file or bad inputs *before* it starts any worker, and it
should not need to parse IR (slow) to do so. Workers still parse the IR to execute it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from gimlet import backends
from gimlet.artifacts import sha256_file
from gimlet.backends.base import FieldReader
from gimlet.errors import UserError

MANIFEST_FILE = "manifest.json"
WEIGHTS_DIR = "weights"
FORMAT = 1
GPU_KINDS = ("nvidia", "amd")  # NCCL (RCCL on ROCm builds of torch) between two of a kind


class BundleError(UserError):
    """A bundle that is missing, tampered with, or built for another cluster."""


def is_bundle(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_FILE))


sha256 = sha256_file  # the name the bundle writer and reader use


def device_info(cluster: Any) -> list[dict[str, str]]:
    """A cluster's devices as the manifest records them."""
    return [{"name": d.name, "kind": d.kind, "model": d.model} for d in cluster.devices.values()]


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
            if sha256(fpath) != digest:
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


def manifest_reader(where: str) -> FieldReader:
    """What a backend validates its artefact entry with (errors name `where` and the field)."""
    return _Shape(where).get


def check_manifest(m: dict[str, Any], where: str) -> None:
    """Every field a launcher or worker reads exists, has its type and points inside the
    bundle, so a hand-edited or truncated manifest fails here with one message rather
    than as a KeyError in some worker."""
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
        if kind not in backends.kinds():
            raise BundleError(
                f"{where}: {p} has artefact kind {kind!r}; this gimlet runs "
                f"{', '.join(sorted(backends.kinds()))}"
            )
        referenced.append(f.get(art, "file", str, f"{p}.artefact"))
        referenced += backends.get(kind).artefact_files(art, f.get, f"{p}.artefact")
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
    from gimlet.placement.target import resolve

    built = bundle.manifest["cluster"]["devices"]
    wanted = device_info(resolve(target))
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


def check_inputs(bundle: Bundle, inputs: list[np.ndarray], micro_batches: int = 1) -> None:
    """Reject inputs that do not fit the signature, before any worker starts. With
    `micro_batches` > 1 the inputs are one micro-batch of the caller's (runtime/pipeline.py),
    and a refusal says so: the shape it names is not the one the caller passed."""
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
            piece = (
                f" (a micro-batch: every input's first dim cut in {micro_batches}; the bundle "
                "was compiled for one micro-batch)"
                if micro_batches > 1
                else ""
            )
            raise BundleError(
                f"input {s['name']}: expected {s['dtype']} [{want}], got {x.dtype.name} "
                f"array of shape {list(x.shape)}{piece}"
            )
