"""`gimlet.load(bundle)`: a bundle as a callable on torch tensors, in this process when it
can, else on one worker process per device.

processes="auto" (the default) runs the bundle in the caller's process (runtime/
inprocess.py) when all its segments can run there: one device, or the host CPU with one
GPU of this machine; bundles spread over several CPU devices or several GPUs get their
worker processes (runtime/launch.py): the caller runs the host's share itself when its
channels to the others are shared memory, the other devices each get a worker. "one"
and "per-device" force either; `.processes` and `.reason` say what was chosen and why,
and `.report` what runs each segment here (backends/report.py); a segment that falls
back at load (e.g. TensorRT not installed) is said once on stderr.
"""

from __future__ import annotations

import sys
import time
import weakref
from typing import Any

import numpy as np

from gimlet.backends.report import format_report, run_report
from gimlet.runtime.bundle import check_cluster, load_bundle
from gimlet.runtime.launch import RunResult, Session


class Loaded:
    """Call with torch tensors (or numpy arrays), get a tuple of torch tensors back, on the
    device of the inputs. The bundle is checked once, here.

    With worker processes, they start on the first call and stay up until `close()`, the
    end of a `with` block, or garbage collection; `.last` is the last call's RunResult."""

    def __init__(
        self,
        bundle: str,
        *,
        processes: str = "auto",
        target: str | None = None,
        timeout_s: float | None = None,
        deadline_s: float | None = None,
        micro_batches: int = 1,
    ):
        from gimlet.runtime.inprocess import InProcess, plan_processes

        self.bundle = load_bundle(bundle)
        if target:
            check_cluster(self.bundle, target)
        self.inprocess: InProcess | None = None
        self.session: Session | None = None
        self._last: tuple[list[Any], float, float, list[int]] | RunResult | None = None
        self.processes, self.reason, module = plan_processes(self.bundle, processes, micro_batches)
        if micro_batches > 1:
            where = "this process" if self.processes == "one" else "one worker per device"
            self.reason = f"{micro_batches} micro-batches pipelined over {where} ({self.reason})"
        self.report = run_report(self.bundle.manifest)  # what runs each segment here
        sys.stderr.write(format_report([r for r in self.report if r.when == "load"], "gimlet"))
        if self.processes == "one":
            self.inprocess = InProcess(self.bundle, module=module, micro_batches=micro_batches)
        else:
            self.session = Session(
                self.bundle,
                timeout_s,
                deadline_s=deadline_s,
                host_in_caller=True,
                module=module,
                micro_batches=micro_batches,
            )
            self._finalizer = weakref.finalize(self, self.session.close)
            if self.session.local is not None:
                others = [self.bundle.devices[r] for r in self.session.ranks]
                self.reason += (
                    f"; the host {self.bundle.host} in this process, {', '.join(others)} on "
                    + ("workers" if len(others) > 1 else "a worker")
                )

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        if self.inprocess is not None:
            start = time.perf_counter()
            outs = self.inprocess(*inputs)
            self._last = (outs, time.perf_counter() - start, self.inprocess.kernel_s, [])
            return tuple(outs)
        from gimlet.runtime.inprocess import to_host

        assert self.session is not None
        if self.session.local is not None:  # the host's share here, the rest on workers
            outs = self.session.call(*inputs)
            last = self.session.last
            assert last is not None
            self._last = (outs, last.wall_s, last.kernel_s, last.pids)
            return tuple(outs)
        self._last = result = self.session([to_host(x) for x in inputs])
        return tuple(_place(result.outputs, inputs, result.handed))

    @property
    def last(self) -> RunResult | None:
        """The last call: outputs, per-rank stats (multi-process), worker pids, wall time."""
        if isinstance(self._last, tuple):
            outs, wall, kernel_s, pids = self._last
            return RunResult([np.asarray(o.cpu()) for o in outs], [], pids, wall, kernel_s)
        return self._last

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def __enter__(self) -> Loaded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<gimlet.Loaded {self.bundle.path}: processes={self.processes} ({self.reason})>"


def _place(outputs: list[np.ndarray], inputs: tuple[Any, ...], owned: bool) -> list[Any]:
    """Worker outputs as torch tensors, on the device of the first CUDA input if any
    (`owned`: in memory that is theirs, not to be copied)."""
    from gimlet.runtime.inprocess import outputs_like

    return outputs_like(list(outputs), inputs, owned)
