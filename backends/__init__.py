"""gimlet's backends, found by artefact kind (the manifest's `segments[i].artefact.kind`).

Each registry line names a module that defines `BACKEND` (see `base.Backend`). Modules
are imported on first use, and a backend module imports its toolchain (g++, nvcc,
TensorRT, torch.cuda, ...) only inside its methods, so importing gimlet, or choosing a
backend for another device kind, costs nothing and works where that toolchain is absent.

Order matters: for a device kind, the first backend that serves it is the default
(`gimletc compile --backend KIND=OPTION` picks another); the interpreter serves every
kind and comes last.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from gimlet.backends.base import Backend
from gimlet.errors import UserError

REGISTRY: dict[str, str] = {
    "cpu-cxx": "gimlet.backends.cpu.backend",
    "cuda": "gimlet.backends.nvidia.backend",
    "tensorrt": "gimlet.backends.tensorrt.backend",  # --backend nvidia=tensorrt
    "interpreter": "gimlet.backends.interpreter",
}


def get(kind: str) -> Backend:
    """The backend of an artefact kind; KeyError if none is registered."""
    backend: Backend = importlib.import_module(REGISTRY[kind]).BACKEND
    assert backend.name == kind, f"{REGISTRY[kind]}.BACKEND is {backend.name!r}, not {kind!r}"
    return backend


def kinds() -> list[str]:
    """Every registered artefact kind."""
    return list(REGISTRY)


def serving(device_kind: str) -> list[Backend]:
    """The backends that can run segments on `device_kind`, default first."""
    found = [get(k) for k in REGISTRY]
    return [b for b in found if not b.device_kinds or device_kind in b.device_kinds]


def select(device_kind: str, choices: Mapping[str, str]) -> Backend:
    """The backend for a device kind: `choices[device_kind]` (an option name such as "cxx"
    or "interpreter") if given, else the default; a UserError names the valid options."""
    options = serving(device_kind)
    wanted = choices.get(device_kind)
    if wanted is None:
        return options[0]
    for b in options:
        if b.option == wanted:
            return b
    valid = ", ".join(b.option for b in options)
    raise UserError(f"no backend {wanted!r} for {device_kind} devices; expected one of {valid}")


__all__ = ["REGISTRY", "Backend", "get", "kinds", "select", "serving"]
