"""Getting a model into gimlet: load, export, decompose, import.

Accepts an ExportedProgram, a `.pt2` file from `torch.export.save`, an
`nn.Module` with example inputs, or `path/model.py:factory` where the factory
returns `(module, example_inputs)` or `(module, example_inputs, dynamic_shapes)`.
`frontend()` does all of it through the export cache (cache.py) and times each phase.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import OutputKind
from xdsl.dialects.builtin import ModuleOp

from gimlet.artifacts import WeightsWriter
from gimlet.errors import UserError

aten = torch.ops.aten

# Ops kept whole instead of decomposed: backends want them fused.
KEEP_WHOLE = (aten.scaled_dot_product_attention.default,)


def load_factory(spec: str) -> tuple[torch.nn.Module, tuple[Any, ...], Any]:
    """`path/model.py:factory` -> (module, example_inputs, dynamic_shapes or None)."""
    return _load_factory(spec)[:3]


def _load_factory(spec: str) -> tuple[torch.nn.Module, tuple[Any, ...], Any, ModuleType]:
    """load_factory, plus the Python module the factory lives in (the export cache's key
    hashes its source and what it imports)."""
    path, _, name = spec.rpartition(":")
    if not path and not os.path.exists(spec):
        raise UserError(f"{spec}: no such file or directory")
    if not path or not name:
        raise UserError(f"expected MODEL as path/model.py:factory or a .pt2 file, got '{spec}'")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    mod_name = "gimlet_user_" + os.path.splitext(os.path.basename(path))[0]
    loader = importlib.util.spec_from_file_location(mod_name, path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"{path}: failed to import: {_user_frame(e, path)}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"{path}: no function '{name}' (found: {_public_callables(module)})")
    try:
        made = factory()
    except Exception as e:
        raise UserError(f"{path}: {name}() failed: {_user_frame(e, path)}") from e
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise UserError(
            f"{path}: {name}() must return (module, example_inputs[, dynamic_shapes]), "
            f"got {type(made).__name__}"
        )
    model, inputs = made[0], made[1]
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{path}: {name}() returned {type(model).__name__}, not a torch.nn.Module")
    inputs = tuple(inputs) if isinstance(inputs, list | tuple) else (inputs,)
    return model, inputs, made[2] if len(made) == 3 else None, module


def _public_callables(module: Any) -> str:
    names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
    return ", ".join(sorted(names)) or "none"


def _user_frame(e: BaseException, path: str) -> str:
    """`file:line: Error: msg` using the innermost frame inside the user's file."""
    where = ""
    for frame in traceback.extract_tb(e.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            where = f"{path}:{frame.lineno}: "
    return f"{where}{type(e).__name__}: {e}"


def export(
    model: torch.nn.Module, inputs: Sequence[Any], dynamic_shapes: Any = None
) -> ExportedProgram:
    model = model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, tuple(inputs), dynamic_shapes=dynamic_shapes)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"torch.export failed: {type(e).__name__}: {msg}") from e


def decompose(ep: ExportedProgram) -> ExportedProgram:
    """`ep` as the importer takes it: as exported when every node imports as it is
    (as_exported), else through torch's default decompositions but KEEP_WHOLE."""
    if as_exported(ep) is None:
        return ep
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        table.pop(op, None)
    return ep.run_decompositions(table)


def as_exported(ep: ExportedProgram) -> str | None:
    """None when the importer can take `ep` as torch.export gave it, skipping
    run_decompositions (registry.py says why and which ops); else the first node that
    needs decomposing, as `name (target): why`."""
    import operator

    from gimlet.frontend import converters as _converters  # noqa: F401  (fills CONVERTERS)
    from gimlet.frontend.registry import AS_EXPORTED, ASSERTIONS, CONVERTERS, DECOMPOSED_FIRST

    if any(s.kind != OutputKind.USER_OUTPUT for s in ep.graph_signature.output_specs):
        return "the program updates a buffer or an input"
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        target = node.target
        if isinstance(node.meta.get("val"), torch.SymInt | int):
            continue  # size arithmetic: the importer rebuilds it from sympy either way
        why = None
        if not isinstance(target, torch._ops.OpOverload):
            why = "not an ATen op"
        elif target._schema.is_mutable:  # an in-place op: only functionalization removes it
            why = "mutates its input"
        elif target in ASSERTIONS:
            continue
        elif target not in CONVERTERS or target in DECOMPOSED_FIRST:
            why = "imported after decomposition"
        elif target in AS_EXPORTED and not AS_EXPORTED[target](node):
            why = "this form is imported after decomposition"
        if why is not None:
            return f"{node.name} ({target}): {why}"
    return None


def load_program(
    model: Any, example_inputs: Sequence[Any] | None = None, dynamic_shapes: Any = None
) -> ExportedProgram:
    """Any accepted model form -> an un-decomposed ExportedProgram."""
    if isinstance(model, ExportedProgram):
        return model
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise UserError("compiling an nn.Module needs example_inputs")
        return export(model, example_inputs, dynamic_shapes)
    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if path.endswith(".pt2"):
            if not os.path.isfile(path):
                raise UserError(f"{path}: no such file")
            try:
                return torch.export.load(path)
            except Exception as e:
                raise UserError(
                    f"{path}: not a torch.export archive ({type(e).__name__}: {e})"
                ) from e
        module, inputs, dyn = load_factory(path)
        return export(module, inputs, dyn if dynamic_shapes is None else dynamic_shapes)
    raise UserError(f"cannot compile a {type(model).__name__}")


def import_model(
    model: Any, example_inputs: Sequence[Any] | None = None, dynamic_shapes: Any = None
) -> tuple[ModuleOp, dict[str, np.ndarray]]:
    from gimlet.frontend.importer import import_program

    ep = decompose(load_program(model, example_inputs, dynamic_shapes))
    return import_program(ep)


# --- the frontend as the CLI and the API run it: through the export cache


@dataclass
class Imported:
    """What the frontend hands the pass pipeline: the imported module (not yet through any
    pass), its weights, the example inputs to keep beside the output (one array per
    program input, or None), and the wall time of each phase in seconds.

    On a hit whose entry holds the final IR for the caller's output key, `output` is that
    IR and the import is not parsed unless `module` is read."""

    _module: ModuleOp | None
    weights: dict[str, np.ndarray]
    example_inputs: list[np.ndarray] | None
    phases: dict[str, float] = field(default_factory=dict)
    cached: str | None = None  # the export cache entry this came from, on a hit
    _entry: Any = None
    # stores the entry on a miss, or the final IR in the entry of a hit; None when done
    _store: Callable[[str | None, Any], Any] | None = None
    output: Any = None  # cache.Output: the final IR of an earlier identical compile
    writer: WeightsWriter | None = None  # writing `weights` since before torch.export

    @property
    def module(self) -> ModuleOp:
        if self._module is None:
            from gimlet.ir import parse

            self._module = parse(self._entry.ir, os.path.join(self._entry.path, "imported.mlir"))
        return self._module

    @property
    def has_weights_file(self) -> bool:
        """Whether a hit has the weights file of an earlier compile to link."""
        return self._entry is not None and self._entry.weights_file is not None

    def link_weights(self, dst: str) -> bool:
        """On a hit, hard-link the cached weights file (a previous compile's output) to
        `dst` instead of writing the weights; False when there is none to link."""
        if self._entry is None:
            return False
        from gimlet.frontend.cache import link_weights

        return link_weights(self._entry, dst)

    def commit(self, weights_file: str | None = None, output: Any = None) -> None:
        """On a miss, store the export cache entry; `weights_file` (the output just
        written, holding exactly `weights`) is hard-linked into it. `output` (a
        cache.Output: the final IR for the output key given to frontend()) is kept in the
        entry, a hit's included, for the next compile with that pipeline."""
        if self._store is not None:
            start = time.perf_counter()
            self._store(weights_file, output)
            self._store = None
            self.phases["cache store"] = time.perf_counter() - start


def frontend(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    dynamic_shapes: Any = None,
    *,
    cache: bool = True,
    note: Callable[[str], None] | None = None,
    output_key: str | None = None,
    out_dir: str | None = None,
) -> Imported:
    """load_program + decompose + import_program, through the export cache (cache.py)
    unless `cache` is False or the model is an ExportedProgram already. `note` receives
    one line about a cache entry that could not be used. A miss is stored by
    `Imported.commit()`, which the caller runs once its output is written.

    `output_key` (cache.output_key): the caller's pass pipeline; a hit then returns the
    final IR an earlier compile with it kept (Imported.output), if any. `out_dir`: where
    the caller will write the weights; when torch.export has to run, a WeightsWriter
    starts writing the model's tensors beside it first (Imported.writer)."""
    with _collector_frozen():
        return _frontend(model, example_inputs, dynamic_shapes, cache, note, output_key, out_dir)


@contextmanager
def _collector_frozen() -> Iterator[None]:
    """Keep the objects that exist now, and the model once the factory made it, out of the
    cyclic collector until the frontend is done: torch.export's garbage triggers full
    collections that rescan them all (~0.1-0.3 s each after building GPT-2 small, several
    per export, one of them often in gimlet's cache print or parse). Left alone when the
    caller froze objects itself."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _frontend(
    model: Any,
    example_inputs: Sequence[Any] | None,
    dynamic_shapes: Any,
    cache: bool,
    note: Callable[[str], None] | None,
    output_key: str | None,
    out_dir: str | None,
) -> Imported:
    phases: dict[str, float] = {}
    clock = _Clock(phases)
    inputs: Sequence[Any] | None = example_inputs
    modules_before = set(sys.modules)  # what is imported during this call is fresh
    started = time.time()
    if isinstance(model, ExportedProgram):
        return _import(model, phases, clock, None)
    if isinstance(model, str | os.PathLike) and os.fspath(model).endswith(".pt2"):
        return _pt2(os.fspath(model), phases, clock, cache, note, output_key)
    roots: list[ModuleType] = []
    factory = None
    if isinstance(model, str | os.PathLike):
        spec = os.fspath(model)
        model, inputs, dyn, factory_module = _load_factory(spec)
        dynamic_shapes = dyn if dynamic_shapes is None else dynamic_shapes
        roots.append(factory_module)
        factory = spec.rpartition(":")[2]
        if gc.get_freeze_count():  # frozen by _collector_frozen: the model joins them
            gc.freeze()
        clock("factory")
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"cannot compile a {type(model).__name__}")
    if inputs is None:
        raise UserError("compiling an nn.Module needs example_inputs")
    inputs = tuple(inputs)
    model = model.eval()

    def exported() -> Imported:
        return _exported(model, inputs, dynamic_shapes, phases, clock, out_dir)

    if not cache:
        return exported()
    from gimlet.frontend import cache as c

    parts: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = {}
    edited = None
    try:
        parts, tensors = _key_parts(c, model, roots, factory, inputs, dynamic_shapes)
    except Exception as e:  # an exotic tensor or attribute: compile without the cache
        edited = f"cannot compute its key ({_why(e)})"
    if parts is not None:
        imported_now = [m for n, m in list(sys.modules.items()) if n not in modules_before]
        fresh = [f for f in map(c.module_file, [*roots, *imported_now]) if f]  # roots: run anew
        path = c.edited_since_import(parts["source"], fresh, started)
        edited = f"{path} changed after this process imported it" if path else None
    if parts is None or edited is not None:
        if note and edited:
            note(f"not using the export cache: {edited}")
        return exported()
    base = c.key_of(parts)
    hashing = None
    entry, replace = None, False
    guess: tuple[str, ModuleOp] | None = None
    if c.has_entries(base):  # the weights decide which entry, if any
        hashing = c.hash_in_background(tensors)
        # Entries that share `base` differ in their weights only, so their IR is the same:
        # parse the latest one's while the weights are hashed on other threads, unless it
        # holds the final IR for this pipeline (then nothing needs parsing).
        if output_key is None or not c.has_output(c.latest_entry(base), output_key):
            guess = _parse_guess(c.latest_ir(base))
        try:
            key = f"{base}/{hashing.result()}"
        except Exception as e:  # an exotic tensor: compile without the cache
            if note:
                note(f"not using the export cache: cannot hash the weights ({_why(e)})")
            return exported()
        hashing = None
        clock("cache key")
        entry, replace = _lookup(key, note)
    else:  # a miss whatever the weights: hash them while torch.export runs
        hashing = c.hash_in_background(tensors)
        clock("cache key")
    if entry is not None:
        names = entry.meta.get("from_model", [])
        if all(n in tensors for n in names):
            from gimlet.dtypes import torch_to_numpy

            weights = {n: torch_to_numpy(tensors[n]) for n in names}
            weights.update(entry.extra)
            parsed = guess[1] if guess is not None and guess[0] == entry.ir else None
            example = _example_arrays(inputs)
            hit = _from_entry(entry, weights, example, phases, clock, note, parsed, output_key)
            if hit is not None:
                return hit
        replace = True
    imported = exported()
    from_model = [n for n, a in imported.weights.items() if _same_memory(a, tensors.get(n))]
    extra = {n: a for n, a in imported.weights.items() if n not in set(from_model)}
    try:
        ir = _print(imported.module)
    except BaseException:  # gimlet's bug: still, leave no weights file behind
        if imported.writer is not None:
            imported.writer.discard()
        raise
    if hashing is not None:
        try:
            key = f"{base}/{hashing.result()}"
        except Exception as e:
            if note:
                note(f"not using the export cache: cannot hash the weights ({_why(e)})")
            return imported
    clock("cache print")

    def store(weights_file: str | None, output: Any) -> str | None:
        outputs = {output_key: output} if output_key and output is not None else None
        return c.store(
            key, parts, ir, extra, None, weights_file, None, replace, from_model, outputs
        )

    imported._store = store
    return imported


def _exported(
    model: torch.nn.Module,
    inputs: Sequence[Any],
    dynamic_shapes: Any,
    phases: dict[str, float],
    clock: _Clock,
    out_dir: str | None,
) -> Imported:
    """torch.export, decompositions and the import; with `out_dir`, the model's tensors
    are written beside it meanwhile, on a thread (WeightsWriter's `ahead`): the second
    core is mostly idle while torch.export holds the GIL, and 650 MB take 0.1-1.5 s to
    write here, more than all of gimlet's own work."""
    writer = None
    if out_dir is not None:
        ahead: dict[str, torch.Tensor] = dict(model.state_dict(keep_vars=True))
        for name, b in model.named_buffers(remove_duplicate=False):  # non-persistent too
            ahead.setdefault(name, b)
        writer = WeightsWriter(out_dir, ahead=ahead)
    try:
        imported = _import(export(model, inputs, dynamic_shapes), phases, clock, inputs)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.settle(imported.weights)
        imported.writer = writer
    return imported


def _key_parts(
    c: ModuleType,
    model: torch.nn.Module,
    roots: list[ModuleType],
    factory: str | None,
    inputs: Sequence[Any],
    dynamic_shapes: Any,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(what the cache key of a live model is made of but the weights, the tensors whose
    bytes make the rest)."""
    structure, tensors = c.model_state(model)
    files, packages = c.source_closure([*roots, *_class_modules(model)])
    parts = {
        **c.environment(),
        "factory": factory,
        "source": files,
        "packages": packages,
        "model": c.key_of({"structure": structure}),
        **c.input_specs(inputs, dynamic_shapes),
    }
    return parts, tensors


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _Clock:
    """Adds the time since the previous call to phases[name]."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


def _import(
    ep: ExportedProgram, phases: dict[str, float], clock: _Clock, inputs: Sequence[Any] | None
) -> Imported:
    from gimlet.frontend.importer import import_program

    clock("export")
    ep = decompose(ep)
    clock("decompositions")
    module, weights = import_program(ep)
    clock("import")
    example = _example_arrays(inputs if inputs is not None else _ep_inputs(ep))
    return Imported(module, weights, _fit(example, module), phases)


def _ep_inputs(ep: ExportedProgram) -> Sequence[Any] | None:
    """The example inputs a program was exported with (a .pt2 archive keeps them)."""
    example = getattr(ep, "example_inputs", None)
    if not example:
        return None
    args, kwargs = example
    return None if kwargs else args


def _example_arrays(inputs: Sequence[Any] | None) -> list[np.ndarray] | None:
    """Example inputs as arrays, when every one is a tensor; else None (nothing kept)."""
    from gimlet.dtypes import torch_to_numpy

    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        return None
    return [torch_to_numpy(t) for t in inputs]


def _fit(example: list[np.ndarray] | None, module: ModuleOp) -> list[np.ndarray] | None:
    """The example inputs, one per program input (None when they do not line up)."""
    from gimlet.ir import input_names

    if example is None or len(example) != len(input_names(module)):
        return None
    return example


def _class_modules(model: torch.nn.Module) -> list[ModuleType]:
    names = {type(m).__module__ for m in model.modules()}
    return [sys.modules[n] for n in sorted(names) if n in sys.modules]


def _same_memory(a: np.ndarray, t: torch.Tensor | None) -> bool:
    """Whether the imported weight `a` is the live tensor `t` itself (same bytes in
    place), so that a cache hit can take it from the model instead of from the cache."""
    if t is None or t.device.type != "cpu" or not t.is_contiguous():
        return False
    return bool(
        a.__array_interface__["data"][0] == t.data_ptr()
        and tuple(a.shape) == tuple(t.shape)
        and a.dtype.itemsize == t.element_size()
    )


def _print(module: ModuleOp) -> str:
    from gimlet.ir import print_ir

    return print_ir(module)


def _lookup(key: str, note: Callable[[str], None] | None) -> tuple[Any, bool]:
    """(the entry, or None; whether a corrupt entry is in the way of storing a new one)."""
    from gimlet.frontend.cache import CorruptEntry, cache_dir, lookup

    try:
        return lookup(key), False
    except CorruptEntry as e:
        if note:
            note(f"ignoring a corrupt export cache entry {os.path.join(cache_dir(), key)}: {e}")
        return None, True


def _from_entry(
    entry: Any,
    weights: dict[str, np.ndarray],
    example: list[np.ndarray] | None,
    phases: dict[str, float],
    clock: _Clock,
    note: Callable[[str], None] | None,
    module: ModuleOp | None = None,
    output_key: str | None = None,
) -> Imported | None:
    """The cached import: its final IR for `output_key` when the entry has it (nothing
    parsed), else its IR parsed (unless `module` is that, parsed already); None (after a
    note) when its IR does not parse."""
    from gimlet.frontend import cache as c
    from gimlet.ir import parse

    output = None
    if output_key is not None:
        try:
            output = c.read_output(entry.path, output_key)
        except c.CorruptEntry as e:  # the passes run again and replace it
            if note:
                note(f"ignoring a corrupt export cache entry {entry.path}: {e}")
    if output is not None:
        clock("cache load")
        fit = example if example is not None and len(example) == len(output.inputs) else None
        return Imported(None, weights, fit, phases, entry.path, entry, output=output)
    try:
        if module is None:
            module = parse(entry.ir, os.path.join(entry.path, "imported.mlir"))
    except Exception as e:  # a VerificationError, or worse: never a crash
        if note:
            note(f"ignoring a corrupt export cache entry {entry.path}: {e}")
        return None
    clock("cache load")
    hit = Imported(module, weights, _fit(example, module), phases, entry.path, entry)
    if output_key is not None:  # keep this pipeline's final IR in the entry

        def store(weights_file: str | None, out: Any) -> None:
            if out is not None:
                c.write_output(entry.path, output_key, out)

        hit._store = store
    return hit


def _parse_guess(text: str | None) -> tuple[str, ModuleOp] | None:
    """(text, module) when `text` parses; a damaged entry is reported by its lookup."""
    from gimlet.ir import parse

    if text is None:
        return None
    try:
        return text, parse(text)
    except Exception:
        return None


def _pt2(
    path: str,
    phases: dict[str, float],
    clock: _Clock,
    cache: bool,
    note: Callable[[str], None] | None,
    output_key: str | None = None,
) -> Imported:
    """A .pt2 archive: keyed by its bytes; the entry holds all weights and the inputs."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if not cache:
        return _import(load_program(path), phases, clock, None)
    from gimlet.frontend import cache as c

    parts = {**c.environment(), "pt2": c.hash_file(path)}
    key = c.key_of(parts)
    clock("cache key")
    entry, replace = _lookup(key, note)
    if entry is not None and entry.weights_file is not None:
        from gimlet.artifacts import read_safetensors

        try:
            weights = read_safetensors(entry.weights_file)
        except (OSError, ValueError) as e:
            if note:
                note(f"ignoring a corrupt export cache entry {entry.path}: {e}")
        else:
            hit = _from_entry(entry, weights, entry.inputs, phases, clock, note, None, output_key)
            if hit is not None:
                return hit
        replace = True
    imported = _import(load_program(path), phases, clock, None)
    ir = _print(imported.module)
    clock("cache print")
    inputs, weights = imported.example_inputs, imported.weights

    def store(weights_file: str | None, output: Any) -> str | None:
        outputs = {output_key: output} if output_key and output is not None else None
        return c.store(key, parts, ir, {}, inputs, weights_file, weights, replace, [], outputs)

    imported._store = store
    return imported
