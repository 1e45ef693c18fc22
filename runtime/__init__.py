"""gimlet's multi-process runtime: one worker process per device of a bundle.

`gimlet.runtime.launch` starts the workers on one host (what `gimletc run BUNDLE/` does),
`gimlet.runtime.worker` is one worker (also the `torchrun -m` entry point),
`gimlet.runtime.channels` maps comm ops onto torch.distributed point-to-point, and
`gimlet.runtime.bundle` reads and checks a bundle. Each segment runs through the backend
of its artefact kind (`gimlet.backends`), so the runtime names no backend.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load"]


def load(bundle: str, **kwargs: Any) -> Any:
    """A callable running `bundle` on local worker processes (torch tensors in and out)."""
    from gimlet.runtime.launch import Loaded

    return Loaded(bundle, **kwargs)
