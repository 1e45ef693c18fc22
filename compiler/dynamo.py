"""`torch.compile(model, backend="gimlet")`: gimlet as a TorchDynamo backend.

Dynamo captures graphs (one per region between graph breaks) and hands each to
`backend(graph, example_inputs)`. gimlet exports the graph, compiles it with
`gimlet.compile` for the target (default "cpu"; `options={"target": "h200"}` and
`backend`, `processes`, `pin` as in gimlet.compile) and returns the loaded bundle, which
runs in the caller's process. A graph gimlet cannot compile (an op it has no converter
for, a dynamic size it cannot carry) runs on torch as dynamo captured it, with one
warning naming the op; graph breaks fall back per graph.

The module's parameters and buffers reach a dynamo backend as graph inputs (marked
static); gimlet takes them as weights when it compiles, so a call passes only the
activations. If the module's weights change afterwards (an in-place update bumps a
tensor's version, a new Parameter replaces one), gimlet's copy is stale: that graph then
runs on torch, with a warning, until `torch._dynamo.reset()` recompiles it.

Registered through the `torch_dynamo_backends` entry point (pyproject.toml), so
`backend="gimlet"` works without importing gimlet first.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from gimlet.errors import UserError

OPTIONS = ("target", "backend", "processes", "pin")
_WARNED: set[str] = set()


def backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """The dynamo backend: a callable for `gm`, compiled by gimlet, or `gm.forward`."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise UserError(
            f"torch.compile(backend='gimlet'): unknown option(s) {', '.join(unknown)}; "
            f"gimlet takes {', '.join(OPTIONS)}"
        )
    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        kinds = sorted(
            {type(x).__name__ for x in example_inputs if not isinstance(x, torch.Tensor)}
        )
        return _fallback(gm, f"graph inputs that are not tensors ({', '.join(kinds)})")
    weights = [i for i, x in enumerate(example_inputs) if _is_weight(x)]
    try:
        compiled = _compile(gm, example_inputs, weights, opts)
    except UserError as e:
        return _fallback(gm, _first_line(e))
    return _Runner(gm, compiled, example_inputs, weights)


def _is_weight(x: torch.Tensor) -> bool:
    """Parameters and buffers: dynamo marks the module's tensors it lifts to inputs."""
    return isinstance(x, torch.nn.Parameter) or hasattr(x, "_dynamo_static_input_type")


def _compile(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[torch.Tensor],
    weights: list[int],
    opts: dict[str, Any],
) -> Any:
    from gimlet.api import compile as gimlet_compile

    names = _weight_names(gm, weights)
    module = _Graph(gm, example_inputs, dict(zip(weights, names, strict=True)))
    activations = [x for i, x in enumerate(example_inputs) if i not in set(weights)]
    if any(x.requires_grad for x in activations) and torch.is_grad_enabled():
        raise UserError("inputs that require grad (gimlet compiles inference graphs only)")
    compiled = gimlet_compile(module, tuple(a.detach() for a in activations), **opts)
    compiled.loaded()  # build and load now: compile errors belong to compile time
    return compiled


def _weight_names(gm: torch.fx.GraphModule, weights: list[int]) -> list[str]:
    """`fc.weight` for the placeholder of L['self']._modules['fc']._parameters['weight'],
    so gimlet's weights (and its messages) carry the module's names."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names: list[str] = []
    for i in weights:
        node = placeholders[i]
        grapharg = node.meta.get("grapharg")
        source = grapharg.source.name if grapharg is not None else ""
        keys = re.findall(r"\['([^']+)'\]", source)
        name = ".".join(k for k in keys if k != "self") or node.name
        name = re.sub(r"[^A-Za-z0-9_.]", "_", name)
        while name in names or not name:
            name += "_"
        names.append(name)
    return names


class _Graph(torch.nn.Module):
    """The captured graph as a module that owns the weights: export sees them as
    parameters/buffers (gimlet weights), and the activations as its inputs."""

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        example_inputs: Sequence[torch.Tensor],
        names: dict[int, str],
    ):
        super().__init__()
        self.gm = gm
        self.names = names
        for node in gm.graph.nodes:  # module paths as the user names them (pins, messages)
            stack = node.meta.get("nn_module_stack")
            if stack:
                node.meta["nn_module_stack"] = {
                    k: (_module_path(path), cls) for k, (path, cls) in stack.items()
                }
        self.n = len(example_inputs)
        for i, name in names.items():
            owner: torch.nn.Module = self
            *path, leaf = name.split(".")
            for part in path:
                child = getattr(owner, part, None)
                if not isinstance(child, torch.nn.Module):
                    child = torch.nn.Module()
                    owner.add_module(part, child)
                owner = child
            owner.register_buffer(leaf, example_inputs[i].detach())

    def forward(self, *xs: torch.Tensor) -> Any:
        it = iter(xs)
        args = [
            self.get_buffer(self.names[i]) if i in self.names else next(it) for i in range(self.n)
        ]
        # node by node, keeping each node's metadata: what export records for the ops it
        # traces, so gimlet's locations (and messages) point into the user's source
        with torch.fx.traceback.preserve_node_meta():
            return torch.fx.Interpreter(self.gm).run(*args)


def _module_path(path: str) -> str:
    """Dynamo's `L['self'].h[0].attn` (or `._modules['h']`) as `h.0.attn`."""
    path = re.sub(r"\.?_modules\b", "", re.sub(r"^L\['self'\]", "", path))
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    return path.strip(".")


class _Runner:
    """Calls the compiled graph with the activations; runs `gm` on torch when the weights
    it was compiled with have changed since."""

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        compiled: Any,
        example_inputs: Sequence[torch.Tensor],
        weights: list[int],
    ):
        self.gm = gm
        self.run = compiled.loaded()
        self.compiled = compiled  # keeps the bundle's directory alive
        self.weights = weights
        wset = set(weights)
        self.activations = [i for i in range(len(example_inputs)) if i not in wset]
        self.captured = [(example_inputs[i], example_inputs[i]._version) for i in weights]
        out = next(n for n in gm.graph.nodes if n.op == "output")
        self.as_tuple = isinstance(out.args[0], tuple | list)

    def __call__(self, *args: Any) -> Any:
        for i, (w, version) in zip(self.weights, self.captured, strict=True):
            if args[i] is not w or w._version != version:
                _warn(
                    "weights",
                    "gimlet: the module's weights changed after torch.compile captured them; "
                    "this graph runs on torch until torch._dynamo.reset() recompiles it",
                )
                return self.gm(*args)
        outs = self.run(*[args[i] for i in self.activations])
        return tuple(outs) if self.as_tuple else outs[0]


def _fallback(gm: torch.fx.GraphModule, why: str) -> Callable[..., Any]:
    op = re.search(r"unsupported op (\S+)", why)
    _warn(op.group(1) if op else why, f"gimlet cannot compile this graph, it runs on torch: {why}")
    return gm.forward  # type: ignore[no-any-return]


def _warn(key: str, message: str) -> None:
    """Once per reason: dynamo may hand over many graphs that fail alike."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=2)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
