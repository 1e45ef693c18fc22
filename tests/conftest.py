"""Shared fixtures: each model family is exported and imported once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from xdsl.dialects.builtin import ModuleOp

from models import FAMILIES

warnings.filterwarnings("ignore", category=FutureWarning)

# The export cache must neither read nor fill the user's ~/.cache, and each process (an
# xdist worker) gets its own.
os.environ["GIMLET_CACHE_DIR"] = tempfile.mkdtemp(prefix="gimlet-test-cache-")
atexit.register(shutil.rmtree, os.environ["GIMLET_CACHE_DIR"], True)


@dataclass
class Imported:
    name: str
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    module: ModuleOp
    weights: dict[str, np.ndarray]
    expected: list[torch.Tensor]


_CACHE: dict[str, Imported] = {}


def imported(name: str) -> Imported:
    if name not in _CACHE:
        from gimlet.frontend import import_model

        torch.manual_seed(0)
        model, inputs, dyn = FAMILIES[name]()
        model.eval()
        with torch.no_grad():
            out = model(*inputs)
        expected = list(out) if isinstance(out, tuple) else [out]
        module, weights = import_model(model, inputs, dyn)
        _CACHE[name] = Imported(name, model, inputs, module, weights, expected)
    return _CACHE[name]


@pytest.fixture(params=sorted(FAMILIES))
def family(request: Any) -> Imported:
    return imported(request.param)


def mlp_example(rows: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """examples/mlp.py's model (eval) and `rows` rows of seeded input for it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from mlp import model

    module = model()[0].eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((rows, 32)).astype("f4"))
    return module, x
