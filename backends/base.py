"""The backend interface: what the bundle writer and the runtime ask of a backend.

A backend turns the segments placed on one kind of device into an *artefact* (files in
the bundle plus a manifest entry) at `gimletc compile` time, and turns that artefact back
into an `Executor` inside a worker. The writer and the runtime only talk to `Backend`
objects found through the registry (`gimlet.backends`), so neither names a backend.

The runtime-side protocols (`CommHandler`, `Executor`) live here rather than in the
runtime because backends implement them and must not import the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from xdsl.ir import Operation

from gimlet.dialects import comm, gml


class CommHandler(Protocol):
    """What an executor calls for comm ops (implemented by the worker)."""

    def send(self, op: comm.SendOp | comm.ISendOp, value: Any) -> None: ...
    def post_recv(self, op: comm.RecvOp | comm.IRecvOp) -> Any: ...
    def wait_recv(self, pending: Any, op: Operation) -> Any: ...


class Executor(Protocol):
    """Runs the segments of one artefact kind inside a worker (or, for an in-process run,
    inside the caller: runtime/inprocess.py).

    An executor whose compiled parts take device tensors says so with a class attribute
    `tensor_device` (a torch device type, e.g. "cuda"): an in-process run then hands its
    segment values there (torch tensors, moved only when they are elsewhere) instead of
    host numpy arrays, and its sends may pass device tensors to the comm handler."""

    def run_segment(
        self, segment: gml.SegmentOp, inputs: Sequence[Any], index: int, artefact: dict[str, Any]
    ) -> list[Any]: ...


class HostExecutor(Executor, Protocol):
    """The worker's interpreter executor (backends/interpreter.py) as a compiled backend
    uses it: it runs single ops (comm ops go to the worker's CommHandler), and carries
    the per-op progress/fault hook and the trace hook of the worker."""

    def run_op(self, op: Operation, inputs: Sequence[Any]) -> list[Any]: ...
    def before_op(self, op: Operation, what: str = "") -> None: ...
    def on_span(self, name: str, start: float, end: float) -> None: ...


FieldReader = Callable[[Any, "str | int", "type | tuple[type, ...]", str], Any]
"""`read(obj, key, type, path)`: obj[key] if it exists and has that type, else an error
naming the manifest field (`segments[1].artefact.parts[0].source`). The runtime passes
one that raises BundleError, so a backend validates its entry without knowing that type."""


class Backend(Protocol):
    """One way of running segments, registered in `gimlet.backends.REGISTRY`.

    Compile side (the bundle writer, `gimletc compile --target`):
      `compile_segment` writes the segment's files under `bundle_dir` and returns its
      manifest entry (`{"kind": name, "file": "model.mlir", ...}`); it raises
      UnsupportedOpError (its message's lines after the first say which ops and why)
      when it cannot lower the segment, which then runs on the interpreter with that note.
    Run side (a worker): `load` returns the executor for this worker's segments of
      this kind. It gets the worker's interpreter executor, which owns the comm handler,
      the per-op progress/fault hook (`before_op`) and the trace hook (`on_span`), so a
      compiled backend hands comm ops and size arithmetic back to it.
    Both sides: `artefact_files` lists the bundle files an entry references (hashed by
      the writer, checked by the launcher before any worker starts).
    """

    name: str  # the artefact kind in the manifest, e.g. "cpu-cxx"
    option: str  # how `--backend KIND=OPTION` (or `--cpu-backend OPTION`) selects it
    device_kinds: tuple[str, ...]  # cluster device kinds it serves; () = every kind
    label: str  # for messages: "the CPU backend"

    def compile_segment(
        self,
        segment: gml.SegmentOp,
        index: int,
        bundle_dir: str,
        device: Mapping[str, str],
        options: Mapping[str, Any],
    ) -> dict[str, Any]: ...

    def artefact_files(
        self, artefact: dict[str, Any], read: FieldReader, path: str
    ) -> list[str]: ...

    def describe(self, artefact: dict[str, Any]) -> str: ...

    def load(
        self, host: HostExecutor, weights: Mapping[str, np.ndarray], bundle: Any
    ) -> Executor: ...


def segment_call(
    ex: Any, op: Any, index: int, artefact: dict[str, Any]
) -> Callable[[list[Any]], Sequence[Any]]:
    """A segment's run through its executor: the executor's prepared function when it
    offers `prepare` (worked out on the first call, so a library that fails to load
    fails that call, named), else its run_segment."""
    prepared: list[Callable[[list[Any]], Sequence[Any]]] = []

    def call(args: list[Any]) -> Sequence[Any]:
        if not prepared:
            prepare = getattr(ex, "prepare", None)
            if prepare is not None:
                prepared.append(prepare(op, index, artefact))
            else:
                prepared.append(lambda a: ex.run_segment(op, a, index, artefact))
        return prepared[0](args)

    call.prepared = prepared  # type: ignore[attr-defined]
    return call
