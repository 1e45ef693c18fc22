"""Shared fixtures: each model family is exported and imported once per session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from xdsl.dialects.builtin import ModuleOp

from models import FAMILIES

warnings.filterwarnings("ignore", category=FutureWarning)


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
