"""gimlet's runtime: a bundle in the caller's process, or one worker process per device.

`gimlet.runtime.loaded` is `gimlet.load` (it picks one of the two),
`gimlet.runtime.inprocess` runs every segment in the caller's process,
`gimlet.runtime.launch` starts and drives worker processes on one host (what
`gimletc run BUNDLE/` does for a bundle spread over several CPUs or GPUs),
`gimlet.runtime.control` is how the caller talks to them (sockets, shared memory),
`gimlet.runtime.worker` is one worker (also the `torchrun -m` entry point),
`gimlet.runtime.channels` maps comm ops onto torch.distributed point-to-point, and
`gimlet.runtime.bundle` reads and checks a bundle. Each segment runs through the backend
of its artefact kind (`gimlet.backends`), so the runtime names no backend.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load"]


def load(bundle: str, **kwargs: Any) -> Any:
    """A callable running `bundle` (torch tensors in and out): in this process when it can,
    else on local worker processes; see `gimlet.runtime.loaded.Loaded`."""
    from gimlet.runtime.loaded import Loaded

    return Loaded(bundle, **kwargs)
