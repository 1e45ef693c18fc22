"""What `gimletc compile` writes: IR text plus weights, written atomically.

An output directory holds `model.mlir` (the final IR, weights referenced by
name), `weights.safetensors` and, when the model came with example inputs,
`inputs.npz` (so `gimletc run OUT/` needs no --inputs). It is assembled in a temporary sibling and
renamed into place, so a failed compile never leaves a half-written directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping

import numpy as np

from gimlet.errors import UserError

IR_FILE = "model.mlir"
WEIGHTS_FILE = "weights.safetensors"
INPUTS_FILE = "inputs.npz"


def save_weights(path: str, weights: Mapping[str, np.ndarray]) -> None:
    from safetensors.torch import save_file  # torch is slow to import: only when writing

    from gimlet.dtypes import numpy_to_torch

    # Tied weights (one tensor under two names) must be stored twice: safetensors
    # refuses aliases, and each device later loads only the names it reads.
    seen: set[int] = set()
    tensors = {}
    for k, v in weights.items():
        t = numpy_to_torch(np.asarray(v))
        if t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[k] = t.contiguous()
    save_file(tensors, path)


def load_weights(path: str) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    from gimlet.dtypes import torch_to_numpy

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such weights file")
    try:
        return {k: torch_to_numpy(v) for k, v in load_file(path).items()}
    except Exception as e:
        raise UserError(f"{path}: not a safetensors file ({e})") from e


def write_atomically(out_dir: str, fill: Callable[[str], None]) -> None:
    """Run `fill(tmp_dir)`, then move tmp_dir to out_dir (replacing an earlier output)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a directory")
    if (
        os.path.isdir(out_dir)
        and os.listdir(out_dir)
        and not os.path.isfile(os.path.join(out_dir, IR_FILE))
    ):
        raise UserError(f"{out_dir}: not empty and not a gimlet output; refusing to overwrite")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gimlet-", dir=parent)
    try:
        fill(tmp)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def read_inputs(path: str, names: list[str]) -> list[np.ndarray]:
    """`--inputs x.npz`: arrays named after the program's inputs, or arr_0, arr_1, ..."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        data = np.load(path)
    except Exception as e:
        raise UserError(f"{path}: not an .npz file ({e})") from e
    for keys in (names, [f"arr_{i}" for i in range(len(names))]):
        if all(k in data for k in keys):
            return [data[k] for k in keys]
    raise UserError(
        f"{path}: expected arrays named {', '.join(names)} (or arr_0..), found {', '.join(data.files)}"
    )


def save_inputs(path: str, names: list[str], arrays: list[np.ndarray]) -> None:
    """Example inputs under the program's input names (what `--inputs` reads); bf16 has
    no .npz dtype, so it is stored as its bits (uint16) and viewed back on reading."""
    import ml_dtypes

    named = {
        n: (a.view(np.uint16) if a.dtype == np.dtype(ml_dtypes.bfloat16) else a)
        for n, a in zip(names, arrays, strict=True)
    }
    np.savez(path, **named)  # type: ignore[arg-type]


def format_outputs(outputs: list[np.ndarray]) -> str:
    """One line per output: dtype, shape and the first values (what `gimletc run` prints)."""
    return "".join(
        f"out{i}: {o.dtype} {list(o.shape)} {np.array2string(o.ravel()[:6], precision=5)}\n"
        for i, o in enumerate(outputs)
    )


def save_outputs(path: str, outputs: list[np.ndarray]) -> None:
    """`-o outputs.npz`: out0, out1, ..."""
    named: dict[str, np.ndarray] = {f"out{i}": o for i, o in enumerate(outputs)}
    np.savez(path, **named)  # type: ignore[arg-type]
