"""The Python API: the CLI's compile/run for people who live in notebooks."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from xdsl.dialects.builtin import ModuleOp

from gimlet.artifacts import IR_FILE, WEIGHTS_FILE, save_weights, write_atomically
from gimlet.dtypes import numpy_to_torch, torch_to_numpy
from gimlet.frontend.importer import import_program
from gimlet.frontend.load import decompose, load_program
from gimlet.ir import print_ir, verify
from gimlet.pass_manager import DEFAULT_PIPELINE, Instrumentation, run_pipeline


@dataclass
class Compiled:
    """A compiled model: its IR, its weights and the IR after each pass."""

    module: ModuleOp
    weights: dict[str, np.ndarray]
    dumps: dict[str, str] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ir(self) -> str:
        return print_ir(self.module)

    def __str__(self) -> str:
        return self.ir

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run on the reference interpreter; takes and returns torch tensors."""
        from gimlet.interpreter import run

        outs = run(self.module, [torch_to_numpy(t) for t in inputs], self.weights)
        return tuple(numpy_to_torch(np.asarray(o)) for o in outs)

    def save(self, out_dir: str) -> None:
        """Write `model.mlir` and `weights.safetensors` as `gimletc compile -o` does."""
        text = self.ir

        def fill(tmp: str) -> None:
            with builtins.open(f"{tmp}/{IR_FILE}", "w") as f:
                f.write(text)
            save_weights(f"{tmp}/{WEIGHTS_FILE}", self.weights)

        write_atomically(out_dir, fill)


def compile(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    *,
    dynamic_shapes: Any = None,
    pipeline: str = DEFAULT_PIPELINE,
) -> Compiled:
    """Compile an nn.Module (with example inputs), an ExportedProgram, a .pt2 path or
    a `path/model.py:factory` spec. Every pass's output IR is kept in `.dumps`."""
    module, weights = import_program(decompose(load_program(model, example_inputs, dynamic_shapes)))
    verify(module, after="import")
    instr = Instrumentation(keep_dumps=True)
    run_pipeline(module, pipeline, instr)
    return Compiled(module, weights, instr.dumps, instr.timings)


# --- runtime hook: run a `gimletc compile --target` bundle on one worker process per device


def load(bundle: str, **kwargs: Any) -> Any:
    """A callable running `bundle` on local workers: takes and returns torch tensors."""
    from gimlet.runtime import load as _load

    return _load(bundle, **kwargs)
