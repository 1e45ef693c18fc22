"""The export cache: a repeat compile of an unchanged model skips torch.export,
run_decompositions and the import (about 3-4 s for GPT-2 small, most of a compile).

An entry holds what the import produced: the gml IR text (before any pass), the weights
the live model cannot give back (lifted constants; all of them for a .pt2 file), the
example inputs of a .pt2 file and, once a CLI compile has written its output, a hard link
to that output's weights.safetensors, so that the next compile links it instead of
writing the weights again, and that compile's final IR under an output key (see "the
final IR of a compile" below), so that the next one with the same pipeline parses nothing
and runs no pass.

Its key is a sha256 over everything the imported IR depends on:
  - the model's source: for `file.py:factory`, the factory's name and every file of the
    user's tree (outside the standard library and site-packages) the factory module
    reaches through its globals (imported modules, functions, classes), transitively; for
    an nn.Module, the files of its submodules' classes and what they reach the same way;
    for a .pt2 file, its bytes; paths are absolute and the working directory counts,
    because the IR's locations name files relative to it;
  - the versions of the third-party packages that code comes from (transformers, ...);
  - the model's non-tensor state: each submodule's class and attributes (flags, sizes,
    a Hugging Face config's to_dict()), which decide the traced graph;
  - the weights: sha256 of every parameter, buffer and tensor attribute's bytes (hashed
    on threads: hashlib releases the GIL), with names, dtypes, shapes and strides;
  - the input specs: each example input's dtype, shape, stride and device, and the
    dynamic_shapes (Dim names and bounds);
  - torch's version, gimlet's version and a hash of gimlet's frontend sources (a gimlet
    checkout changes without its version changing), Python's major.minor.
What a factory reads outside Python source (environment variables, data files other
than weights) is not in the key: compile with --no-cache when that changes the graph.

Entries live in $GIMLET_CACHE_DIR (default ~/.cache/gimlet/export), one directory per
key (for a live model, `<hash of all but the weights>/<weights hash>`: when no entry
shares the first part, the weights are hashed while torch.export runs), written into a
temporary sibling and renamed into place, so a reader sees a whole entry or none. An entry that cannot be read (a truncated file, a wrong checksum, a
format from another gimlet) is reported in one note and treated as a miss; it is
replaced by the fresh export. Entries can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch

from gimlet.artifacts import sha256_file

FORMAT = 1
META_FILE = "meta.json"
IR_FILE = "imported.mlir"
EXTRA_FILE = "extra.safetensors"  # weights the live model cannot give back
WEIGHTS_FILE = "weights.safetensors"  # all weights: a hard link to a compile's output
INPUTS_FILE = "inputs.safetensors"  # a .pt2 file's example inputs
_CHUNK = 16 << 20  # hash large tensors in pieces so that threads share the work


def cache_dir() -> str:
    return os.environ.get("GIMLET_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "gimlet", "export"
    )


# --- what the key is made of ------------------------------------------------------------

_NOT_USER = tuple(
    os.path.realpath(p).rstrip(os.sep) + os.sep
    for p in {
        *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
    }
    if os.path.realpath(p) != os.sep  # a prefix of / would hide every user file
)


def module_file(module: ModuleType) -> str | None:
    """The module's source file when it belongs to the user's tree, else None (the
    standard library, site-packages, gimlet itself: gimlet_sources covers what of it
    decides the import)."""
    path = getattr(module, "__file__", None)
    name = getattr(module, "__name__", "")
    if not path or name == "gimlet" or name.startswith("gimlet."):
        return None
    real = os.path.realpath(path)
    if real.startswith(_NOT_USER) or not os.path.isfile(real):
        return None
    return real


def _process_start() -> float:
    """When this process started (Linux: its age from /proc), else when this module was
    imported; 1 s early, so that a file saved just before `gimletc` starts does not count
    as edited after."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK")) - 1.0
    except (OSError, ValueError, IndexError):
        return _LOADED - 1.0


_LOADED = time.time()


_IMPORTED_AT: dict[str, float] = {}  # user file -> when a compile saw it imported


def edited_since_import(files: Iterable[str], fresh: Iterable[str], started: float) -> str | None:
    """A user file changed since this process imported it: the module in memory may not be
    what the file now says, so an entry keyed by the file's bytes could hold another
    program. `fresh`: files imported by this compile (started at `started`), as the
    factory's file and all it imports are in a `gimletc` process. For a module imported
    before, the time a previous compile saw it imported, else when the process started.
    None when there is none."""
    for path in fresh:
        _IMPORTED_AT[path] = started
    fresh = set(fresh)
    since = None
    for path in files:
        if path in fresh:
            continue
        if path not in _IMPORTED_AT:
            since = since if since is not None else _process_start()
        if os.path.getmtime(path) > _IMPORTED_AT.get(path, since or 0.0):
            return path
    return None


def source_closure(roots: Iterable[ModuleType]) -> tuple[dict[str, str], dict[str, str]]:
    """({file: sha256} of the user's modules `roots` reach through their globals,
    {top-level package: version} of the third-party modules they reach)."""
    files: dict[str, str] = {}
    packages: dict[str, str] = {}
    seen: set[str] = set()
    stack = [m for m in roots if m is not None]
    while stack:
        module = stack.pop()
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        path = module_file(module)
        if path is None:
            top = module.__name__.partition(".")[0]
            if top not in sys.stdlib_module_names and top not in ("builtins", "gimlet"):
                packages[top] = _version(top)
            continue
        files[path] = sha256_file(path)
        for value in list(vars(module).values()):
            if inspect.ismodule(value):
                stack.append(value)
            elif inspect.isclass(value) or inspect.isfunction(value):
                owner = sys.modules.get(getattr(value, "__module__", "") or "")
                if owner is not None:
                    stack.append(owner)
    return files, packages


def _version(top: str) -> str:
    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return version
    try:
        import importlib.metadata

        return importlib.metadata.version(top)
    except Exception:
        return "?"


def gimlet_sources() -> str:
    """A hash of the sources that decide the imported IR (frontend, dialects, dtypes, IR
    printing, the version): a checkout's edits must invalidate entries without a version
    bump."""
    import gimlet.dialects

    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)  # compiler/: the package root
    dirs = [here, *gimlet.dialects.__path__]
    paths = [os.path.join(d, f) for d in dirs for f in sorted(os.listdir(d)) if f.endswith(".py")]
    paths += [os.path.join(root, f) for f in ("dtypes.py", "errors.py", "ir.py", "version.py")]
    for p in paths:
        h.update(p.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def describe(
    value: Any,
    tensors: dict[str, torch.Tensor] | None = None,
    where: str = "",
    memo: dict[int, Any] | None = None,
) -> Any:
    """A JSON-able description of a non-tensor value (a module attribute, a dynamic_shapes
    entry): primitives as they are, containers item by item, functions and classes by
    their qualified name, objects by class, repr and attributes. Tensors are described by
    dtype and shape and collected into `tensors` under `where`.path (their bytes go into
    the weights hash). `memo` shares descriptions between calls (one config object read
    by every layer is described once)."""
    memo = {} if memo is None else memo

    def walk(v: Any, where: str, depth: int) -> Any:
        if v is None or isinstance(v, bool | int | str):
            return v
        if isinstance(v, float):
            return repr(v)  # nan and inf are not JSON
        if isinstance(v, torch.Tensor):
            if tensors is not None:
                tensors.setdefault(where, v)
            return ["tensor", str(v.dtype), list(v.shape)]
        if isinstance(v, torch.dtype | torch.device | torch.Size):
            return str(v)
        if isinstance(v, np.ndarray):  # its repr elides values: hash them
            data = np.ascontiguousarray(v).tobytes() if v.dtype != object else repr(v).encode()
            return ["ndarray", str(v.dtype), list(v.shape), hashlib.sha256(data).hexdigest()]
        if inspect.isclass(v) or callable(v) and hasattr(v, "__qualname__"):
            return f"{getattr(v, '__module__', '?')}.{v.__qualname__}"
        if depth > 6:
            return type(v).__qualname__
        if id(v) in memo:
            return memo[id(v)]
        memo[id(v)] = "<cycle>"
        if isinstance(v, Mapping):
            out: Any = [
                [walk(k, "", depth + 1), walk(x, f"{where}.{k}", depth + 1)] for k, x in v.items()
            ]
        elif isinstance(v, list | tuple):
            out = [walk(x, f"{where}.{i}", depth + 1) for i, x in enumerate(v)]
        elif isinstance(v, set | frozenset):
            out = sorted((walk(x, "", depth + 1) for x in v), key=repr)
        elif callable(getattr(v, "to_dict", None)):  # Hugging Face configs
            out = [type(v).__qualname__, walk(v.to_dict(), where, depth + 1)]
        else:
            cls = type(v)
            try:
                text = repr(v) if cls.__repr__ is not object.__repr__ else ""
            except Exception:  # a repr that fails describes nothing
                text = "?"
            attrs = vars(v) if hasattr(v, "__dict__") else {}
            out = [f"{cls.__module__}.{cls.__qualname__}", text, walk(attrs, where, depth + 1)]
        memo[id(v)] = out
        return out

    return walk(value, where, 0)


_MODULE_INTERNALS = {"_parameters", "_buffers", "_modules"}


def model_state(model: torch.nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
    """(description of every submodule's class and non-tensor attributes, every tensor the
    program may read by name: parameters, buffers and tensor attributes)."""
    tensors: dict[str, torch.Tensor] = dict(model.state_dict(keep_vars=True))
    for name, b in model.named_buffers(remove_duplicate=False):  # non-persistent ones too
        tensors.setdefault(name, b)
    structure = []
    memo: dict[int, Any] = {}
    for name, sub in model.named_modules(remove_duplicate=False):
        cls = type(sub)
        attrs = [
            [k, describe(v, tensors, f"{name}.{k}" if name else k, memo)]
            for k, v in vars(sub).items()
            if k not in _MODULE_INTERNALS
        ]
        structure.append([name, f"{cls.__module__}.{cls.__qualname__}", attrs])
    return structure, tensors


def _byte_view(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().data


def _digests(views: Sequence[memoryview]) -> list[list[bytes]]:
    """sha256 of each _CHUNK-sized piece of each view, computed on a thread pool
    (hashlib releases the GIL), so large tensors spread over the cores."""
    pieces = [(i, s) for i, v in enumerate(views) for s in range(0, max(len(v), 1), _CHUNK)]

    def digest(piece: tuple[int, int]) -> bytes:
        i, s = piece
        return hashlib.sha256(views[i][s : s + _CHUNK]).digest()

    out: list[list[bytes]] = [[] for _ in views]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for (i, _), d in zip(pieces, pool.map(digest, pieces), strict=True):
            out[i].append(d)
    return out


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes, strides and bytes; tensors sharing memory (tied
    weights) are read once."""
    index: dict[tuple[Any, ...], int] = {}
    views: list[memoryview] = []
    names: list[tuple[str, tuple[Any, ...], int]] = []
    for name in sorted(tensors):
        t = tensors[name]
        ident = (t.data_ptr(), t.device, t.dtype, tuple(t.shape), t.stride())
        if ident not in index or t.data_ptr() == 0:
            index[ident] = len(views)
            views.append(_byte_view(t))
        names.append((name, ident, index[ident]))
    digests = _digests(views)
    h = hashlib.sha256()
    for name, (_, _, dtype, shape, stride), i in names:
        h.update(f"{name}|{dtype}|{shape}|{stride}|".encode())
        h.update(b"".join(digests[i]))
    return h.hexdigest()


def hash_file(path: str) -> str:
    """sha256 over the file's pieces' sha256s (a .pt2 archive holds the weights: hundreds
    of MB), read through mmap and hashed on threads."""
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                return hashlib.sha256(b"".join(_digests([view])[0])).hexdigest()
            finally:
                view.release()


def input_specs(inputs: Sequence[Any], dynamic_shapes: Any) -> Any:
    specs = [
        [str(x.dtype), list(x.shape), list(x.stride()), str(x.device)]
        if isinstance(x, torch.Tensor)
        else describe(x)
        for x in inputs
    ]
    return {"inputs": specs, "dynamic_shapes": describe(dynamic_shapes)}


def environment() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "torch": torch.__version__,
        "gimlet": _version("gimlet"),  # (version.py's bytes are in gimlet_sources too)
        "gimlet_sources": gimlet_sources(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cwd": os.getcwd(),
    }


def key_of(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- entries -----------------------------------------------------------------------------


class CorruptEntry(Exception):
    """An entry that cannot be used; the message says why."""


@dataclass
class Entry:
    """A stored import: the IR text, weights by name, the example inputs (a .pt2's)."""

    path: str
    ir: str
    meta: dict[str, Any]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[np.ndarray] | None = None

    @property
    def weights_file(self) -> str | None:
        """The entry's full weights file (a compile's output, hard-linked), when whole."""
        info = self.meta.get("weights_file")
        path = os.path.join(self.path, WEIGHTS_FILE)
        try:
            ok = info is not None and os.path.getsize(path) == info["size"]
        except OSError:
            ok = False
        return path if ok else None


def has_entries(base: str) -> bool:
    """Whether any entry shares everything but the weights with `base` (a live model's
    entries are `base/weights-hash`): when none does, the compile is a miss whatever the
    weights, and they are hashed while torch.export runs instead of before."""
    return os.path.isdir(os.path.join(cache_dir(), base))


def latest_entry(base: str) -> str | None:
    """The path of the entry stored last under `base`, None if there is none."""
    root = os.path.join(cache_dir(), base)
    try:
        metas = [os.path.join(root, d, META_FILE) for d in os.listdir(root)]
        return os.path.dirname(max((m for m in metas if os.path.isfile(m)), key=os.path.getmtime))
    except (OSError, ValueError):  # none yet, or one being replaced: lookup will tell
        return None


def latest_ir(base: str) -> str | None:
    """The imported IR of the entry stored last under `base`, None if none is readable."""
    latest = latest_entry(base)
    try:
        if latest is None:
            return None
        with open(os.path.join(latest, IR_FILE), encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def hash_in_background(tensors: Mapping[str, torch.Tensor]) -> Future[str]:
    """hash_tensors on a thread (hashlib releases the GIL, torch.export mostly holds it)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(hash_tensors, tensors)
    finally:
        pool.shutdown(wait=False)


def lookup(key: str) -> Entry | None:
    """The entry for `key`, None when there is none; CorruptEntry when there is one that
    cannot be read."""
    from gimlet.artifacts import read_safetensors

    path = os.path.join(cache_dir(), key)
    if not os.path.isdir(path):
        return None
    try:
        with open(os.path.join(path, META_FILE)) as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
            raise CorruptEntry(f"{META_FILE} is not an entry of this gimlet's format")
        with open(os.path.join(path, IR_FILE), encoding="utf-8") as f:
            ir = f.read()
        if hashlib.sha256(ir.encode()).hexdigest() != meta.get("ir_sha256"):
            raise CorruptEntry(f"{IR_FILE} does not match its checksum")
        entry = Entry(path, ir, meta)
        if meta.get("extra"):
            entry.extra = read_safetensors(os.path.join(path, EXTRA_FILE))
        if meta.get("inputs"):
            named = read_safetensors(os.path.join(path, INPUTS_FILE))
            entry.inputs = [named[f"arg{i}"] for i in range(len(named))]
        if meta.get("all_weights") and entry.weights_file is None:
            raise CorruptEntry(f"{WEIGHTS_FILE} is missing or truncated")
        return entry
    except CorruptEntry:
        raise
    except Exception as e:  # whatever a damaged file makes the readers raise
        raise CorruptEntry(f"{type(e).__name__}: {e}") from e


def store(
    key: str,
    parts: Mapping[str, Any],
    ir: str,
    extra: Mapping[str, np.ndarray],
    inputs: Sequence[np.ndarray] | None,
    weights_file: str | None,
    all_weights: Mapping[str, np.ndarray] | None,
    replace: bool = False,
    from_model: Sequence[str] = (),
    outputs: Mapping[str, Output] | None = None,
) -> str | None:
    """Write an entry atomically; its path, or None when it could not be written (a
    read-only cache directory must not fail a compile). `weights_file` (a compile's
    output) is hard-linked into it; `all_weights`, when given, must be in the entry
    (a .pt2 import has no live model to take them from) and are written if the link
    cannot be made. `from_model` names the weights a hit takes from the live model;
    `outputs`: final IR by output key (write_output); `replace`: a corrupt entry is in
    the way and goes."""
    from gimlet.artifacts import write_safetensors

    final = os.path.join(cache_dir(), key)
    root = os.path.dirname(final)  # a live model's entries are base/weights-hash
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    except OSError:
        return None
    try:
        with open(os.path.join(tmp, IR_FILE), "w", encoding="utf-8") as f:
            f.write(ir)
        if extra:
            write_safetensors(os.path.join(tmp, EXTRA_FILE), extra)
        if inputs is not None:
            write_safetensors(
                os.path.join(tmp, INPUTS_FILE), {f"arg{i}": a for i, a in enumerate(inputs)}
            )
        linked = weights_file is not None and _link(weights_file, os.path.join(tmp, WEIGHTS_FILE))
        if not linked and all_weights is not None:
            write_safetensors(os.path.join(tmp, WEIGHTS_FILE), all_weights)
        has_weights = os.path.isfile(os.path.join(tmp, WEIGHTS_FILE))
        meta = {
            "format": FORMAT,
            "key": key,
            "parts": parts,
            "ir_sha256": hashlib.sha256(ir.encode()).hexdigest(),
            "from_model": list(from_model),
            "extra": bool(extra),
            "inputs": inputs is not None,
            "all_weights": all_weights is not None,
            "weights_file": {"size": os.path.getsize(os.path.join(tmp, WEIGHTS_FILE))}
            if has_weights
            else None,
        }
        for okey, output in (outputs or {}).items():
            write_output(tmp, okey, output)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        if replace and os.path.isdir(final):
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another compile stored the same key first: keep theirs
            return final if os.path.isdir(final) else None
        return final
    except Exception:  # a full disk, a dtype safetensors lacks: the compile goes on
        return None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _link(src: str, dst: str) -> bool:
    """Hard-link `src` to `dst`, read-only: the cache and a compile's output then share
    one file, which nobody should change in place (gimlet replaces outputs whole)."""
    try:
        os.link(src, dst)
        os.chmod(dst, 0o444)
        return True
    except OSError:
        return False


def link_weights(entry: Entry, dst: str) -> bool:
    """Put the entry's full weights file at `dst` (a hard link: no bytes written)."""
    src = entry.weights_file
    return src is not None and _link(src, dst)


# --- the final IR of a compile ----------------------------------------------------------
#
# A `gimletc compile` hit still parsed the cached import, verified it, ran the passes and
# printed the result (~0.3 s for GPT-2 small, more than half of what gimlet spent on a
# repeat compile). An entry also keeps what that came to, `output-<output key>.json`,
# one per pass pipeline: the output key is a hash of the pipeline, whether locations are
# printed, every source file of gimlet (any pass, dialect or printer may change the
# text) and the versions of the packages the passes run on. Together with the entry's
# key (everything the import depends on) that is everything the final IR depends on;
# passes read no environment and no weight values.


@dataclass
class Output:
    """The final IR of a compile, with what the CLI reports about it."""

    ir: str
    ops: int  # operations in it, for the CLI's summary line
    inputs: list[str]  # the program's input names, for the example inputs file


def gimlet_tree() -> str | None:
    """A hash of every Python source of the gimlet package (all its folders: the
    package maps them from several top-level directories); None when one of them changed
    after this process started, so that the code running may not be what the files say
    (a final IR made by it must not be stored under their hash, nor one stored under it
    be taken for its output)."""
    import importlib.util

    started = _process_start()
    h = hashlib.sha256()
    roots = []
    for name in ("gimlet", "gimlet.dialects", "gimlet.passes", "gimlet.backends", "gimlet.runtime"):
        spec = importlib.util.find_spec(name)  # finds a subpackage without importing it
        roots += list(spec.submodule_search_locations or []) if spec else []
    seen: set[str] = set()
    for root in sorted(roots):
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for f in sorted(files):
                path = os.path.realpath(os.path.join(folder, f))
                if f.endswith(".py") and path not in seen:
                    seen.add(path)
                    if os.path.getmtime(path) > started:
                        return None
                    h.update(path.encode())
                    h.update(sha256_file(path).encode())
    return h.hexdigest()


def output_key(pipeline: str, locations: bool) -> str | None:
    """The key of a compile's final IR within an entry; None when gimlet's sources changed
    while this process ran (then the passes run and nothing is kept). In-process changes
    to gimlet's code (a test replacing a pass's method) are not in it: such a caller
    compiles with --no-cache."""
    tree = gimlet_tree()
    if tree is None:
        return None
    return key_of(
        {
            "format": FORMAT,
            "pipeline": pipeline,
            "locations": locations,
            "gimlet": tree,
            "packages": {p: _version(p) for p in ("xdsl", "numpy", "ml_dtypes", "sympy")},
        }
    )


def _output_file(entry_path: str, okey: str) -> str:
    return os.path.join(entry_path, f"output-{okey}.json")


def has_output(entry_path: str | None, okey: str) -> bool:
    return entry_path is not None and os.path.isfile(_output_file(entry_path, okey))


def read_output(entry_path: str, okey: str) -> Output | None:
    """The entry's final IR for `okey`; None when it has none; CorruptEntry when it cannot
    be read."""
    path = _output_file(entry_path, okey)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        out = Output(data["ir"], int(data["ops"]), [str(n) for n in data["inputs"]])
    except Exception as e:  # whatever a damaged file makes the reader raise
        raise CorruptEntry(f"{os.path.basename(path)}: {type(e).__name__}: {e}") from e
    if data.get("key") != okey or hashlib.sha256(out.ir.encode()).hexdigest() != data.get(
        "ir_sha256"
    ):
        raise CorruptEntry(f"{os.path.basename(path)} does not match its checksum")
    return out


def write_output(entry_path: str, okey: str, output: Output) -> bool:
    """Add the final IR for `okey` to an entry, atomically (a temporary file renamed into
    place); False when it cannot be written (a read-only cache)."""
    data = {
        "key": okey,
        "ir_sha256": hashlib.sha256(output.ir.encode()).hexdigest(),
        "ops": output.ops,
        "inputs": output.inputs,
        "ir": output.ir,
    }
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=entry_path)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, _output_file(entry_path, okey))
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


Note = Callable[[str], None]
