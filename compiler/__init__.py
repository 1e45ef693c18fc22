"""gimlet: a dataflow compiler for heterogeneous AI inference.

    import gimlet
    compiled = gimlet.compile(model, (x,))   # torch.export -> gml -> passes
    print(compiled)                          # the IR
    compiled(x)                              # run the compiled C++ (target="cpu") in this process
    run = gimlet.load("bundle/")             # a `gimletc compile --target` bundle: in this
                                             # process when it can, else one worker per device
    torch.compile(model, backend="gimlet")   # registered as a TorchDynamo backend

Heavy imports (torch, xdsl) happen on first use so `gimletc --help` stays fast.
"""

from __future__ import annotations

from typing import Any

from gimlet.version import __version__

__all__ = ["compile", "Compiled", "load", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("compile", "Compiled", "load"):
        from gimlet import api

        return getattr(api, name)
    raise AttributeError(f"module 'gimlet' has no attribute {name!r}")
