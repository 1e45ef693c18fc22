"""The Python API: the CLI's compile/run for people who live in notebooks.

`gimlet.compile(model, example_inputs, target="cpu")` returns a `Compiled`: its IR (and
the IR after each pass) at once, and, on the first call, a bundle for `target` built
into a temporary directory and loaded with `gimlet.load`, so calls run the compiled
backends (generated C++ on the CPU, CUDA on NVIDIA GPUs) in the caller's process. The
numpy reference interpreter runs only when asked: `backend="interpreter"`, or
`compiled.reference(x)`.
"""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from xdsl.dialects.builtin import ModuleOp

from gimlet.artifacts import IR_FILE, WEIGHTS_FILE, save_weights, write_atomically
from gimlet.dtypes import numpy_to_torch, torch_to_numpy
from gimlet.errors import UserError
from gimlet.ir import print_ir, verify
from gimlet.pass_manager import DEFAULT_PIPELINE, Instrumentation, run_pipeline


@dataclass
class Compiled:
    """A compiled model: its IR, its weights, the IR after each pass, and (built on the
    first call) the bundle for `target` that calls run."""

    module: ModuleOp
    weights: dict[str, np.ndarray]
    dumps: Mapping[str, str] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    target: str = "cpu"
    backend: str | Mapping[str, str] | None = None
    processes: str = "auto"
    pin: str = ""
    _loaded: Any = field(default=None, repr=False)
    _dir: str = field(default="", repr=False)

    @property
    def ir(self) -> str:
        return print_ir(self.module)

    def __str__(self) -> str:
        return self.ir

    def __call__(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        """Run on `target`'s compiled backends; torch tensors in and out (outputs on the
        inputs' device)."""
        return self.loaded()(*inputs)  # type: ignore[no-any-return]

    def loaded(self) -> Any:
        """The `gimlet.load`ed bundle calls run (built and loaded on first use); its
        `.processes` and `.reason` say how it runs."""
        if self._loaded is None:
            self._dir = tempfile.mkdtemp(prefix="gimlet-compiled-")
            weakref.finalize(self, shutil.rmtree, self._dir, True)
            path = f"{self._dir}/bundle"
            self.bundle_to(path)
            self._loaded = load(path, processes=self.processes)
            weakref.finalize(self, self._loaded.close)
        return self._loaded

    def bundle_to(self, out_dir: str) -> dict[str, Any]:
        """Write the bundle for `target` (what `gimletc compile --target` writes); its
        manifest. A segment a backend cannot compile runs on the interpreter, with a
        warning naming the op."""
        from gimlet.bundle import write_bundle
        from gimlet.passes.insert_comm import InsertComm
        from gimlet.passes.outline_segments import OutlineSegments
        from gimlet.passes.overlap_comm import OverlapComm
        from gimlet.passes.place import Place

        choices = _backend_choices(self.backend, self.target)
        placed = self.module.clone()
        options = ",".join(f"{k}={v}" for k, v in choices.items())
        passes = [
            Place(target=self.target, pins=self.pin, backends=options),
            OutlineSegments(),
            InsertComm(),
            OverlapComm(),
        ]
        run_pipeline(placed, passes)  # type: ignore[arg-type]
        manifest = write_bundle(out_dir, placed, print_ir(placed), self.weights, choices)
        for seg in manifest["segments"]:
            art = seg["artefact"]
            if "fallback" in art:
                warnings.warn(
                    f"gimlet: segment {seg['index']} on {seg['device']} runs on the reference "
                    f"interpreter: {art['fallback']}",
                    stacklevel=3,
                )
        return manifest

    def reference(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        """Run on the numpy reference interpreter; takes and returns torch tensors."""
        from gimlet.interpreter import run

        outs = run(self.module, [torch_to_numpy(t) for t in inputs], self.weights)
        return tuple(numpy_to_torch(np.asarray(o)) for o in outs)

    def close(self) -> None:
        """Stop worker processes, if the bundle has any (it usually runs in-process)."""
        if self._loaded is not None:
            self._loaded.close()

    def save(self, out_dir: str) -> None:
        """Write `model.mlir` and `weights.safetensors` as `gimletc compile -o` does."""
        text = self.ir

        def fill(tmp: str) -> None:
            with builtins.open(f"{tmp}/{IR_FILE}", "w") as f:
                f.write(text)
            save_weights(f"{tmp}/{WEIGHTS_FILE}", self.weights)

        write_atomically(out_dir, fill)


def _backend_choices(backend: str | Mapping[str, str] | None, target: str) -> dict[str, str]:
    """`backend=` as `--backend KIND=OPTION` choices: None (each kind's default), a
    mapping, "KIND=OPTION,...", or one option for every device kind ("interpreter")."""
    if backend is None:
        return {}
    if isinstance(backend, Mapping):
        return dict(backend)
    if "=" in backend:
        pairs = [item.partition("=") for item in backend.split(",") if item.strip()]
        if any(not k.strip() or not v.strip() for k, _, v in pairs):
            raise UserError(f"backend={backend!r}: expected OPTION or KIND=OPTION,...")
        return {k.strip(): v.strip() for k, _, v in pairs}
    from gimlet.placement.target import resolve

    return {d.kind: backend for d in resolve(target).devices.values()}


def compile(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    *,
    dynamic_shapes: Any = None,
    pipeline: str = DEFAULT_PIPELINE,
    target: str = "cpu",
    backend: str | Mapping[str, str] | None = None,
    processes: str = "auto",
    pin: str = "",
    cache: bool | None = None,
) -> Compiled:
    """Compile an nn.Module (with example inputs), an ExportedProgram, a .pt2 path or
    a `path/model.py:factory` spec. Every pass's output IR is kept in `.dumps`.

    Calling the result runs it on `target` (a preset such as "cpu", "h200", "h100+cpu",
    or a .cluster file): placed, compiled by each device kind's backend (`backend`:
    "interpreter" for the reference interpreter everywhere, or {"cpu": "cxx", ...}) and
    run by `gimlet.load(..., processes=processes)`, in this process unless the cluster
    needs worker processes. `pin` pins ops to devices ("fc1=gpu0,...").

    `cache`: whether to go through the export cache (docs/architecture.md), as `gimletc
    compile` does. By default a .pt2 path or a factory spec does and an nn.Module does
    not: a live module's forward may read what its key cannot see (a closure, a global
    changed since); cache=True takes that risk, cache=False never reads the cache."""
    from gimlet.frontend.load import frontend

    use_cache = isinstance(model, str | os.PathLike) if cache is None else cache
    fe = frontend(model, example_inputs, dynamic_shapes, cache=use_cache, note=_note)
    fe.commit()
    module, weights = fe.module, fe.weights
    verify(module, after="import")
    instr = Instrumentation(keep_dumps=True)
    run_pipeline(module, pipeline, instr)
    return Compiled(
        module,
        weights,
        instr.dumps,
        instr.timings,
        target=target,
        backend=backend,
        processes=processes,
        pin=pin,
    )


def _note(message: str) -> None:
    warnings.warn(f"gimlet: {message}", stacklevel=3)


# --- runtime hook: run a `gimletc compile --target` bundle


def load(bundle: str, **kwargs: Any) -> Any:
    """A callable running `bundle`: in this process when every segment can run here,
    else on one worker process per device (`processes="auto"|"one"|"per-device"`);
    takes and returns torch tensors."""
    from gimlet.runtime import load as _load

    return _load(bundle, **kwargs)
