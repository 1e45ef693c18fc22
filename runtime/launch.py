"""Run a bundle on this host: one worker process per device, the parent as supervisor.

Why a supervisor rather than trusting the workers: a worker that dies outright cannot
tell its peers, and a peer blocked in a receive only notices when its deadline expires.
The parent polls every worker; on the first failure it gives the others a moment to
report, then terminates every worker's process group and reaps it (no zombies, no
orphans), and raises one `RunError` naming the device, segment and op.

Everything that can be rejected without workers (tampered files, wrong cluster, inputs
that do not fit the signature) is rejected before any process starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gimlet.errors import UserError
from gimlet.runtime.bundle import Bundle, check_cluster, check_inputs, load_bundle

POLL_S = 0.01
GRACE_S = 0.5  # after the first failure, how long to wait for the others' reports


class RunError(UserError):
    """A multi-process run that failed; `pids` are the (reaped) worker processes."""

    def __init__(self, message: str, pids: list[int]):
        super().__init__(message)
        self.pids = pids


@dataclass
class RunResult:
    outputs: list[np.ndarray]
    stats: list[dict[str, Any]]  # per rank: device, segments {index: {...}}, events
    pids: list[int] = field(default_factory=list)
    wall_s: float = 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _save_inputs(path: str, inputs: list[np.ndarray]) -> None:
    import ml_dtypes

    arrays = {
        f"arr_{i}": (a.view(np.uint16) if a.dtype == ml_dtypes.bfloat16 else a)
        for i, a in enumerate(inputs)
    }
    np.savez(path, **arrays)  # type: ignore[arg-type]


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def _start(
    bundle: Bundle,
    run_dir: str,
    args: list[str],
    timeout_s: float | None,
    env: dict[str, str] | None,
) -> list[subprocess.Popen[bytes]]:
    """One worker process per device, each in its own process group, logging to run_dir."""
    base = dict(os.environ)
    base.update(env or {})
    base.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(len(bundle.devices)),
        GIMLET_RUN_DIR=run_dir,
    )
    if timeout_s is not None:
        base["GIMLET_RECV_TIMEOUT"] = str(timeout_s)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(len(bundle.devices)):
            with open(os.path.join(run_dir, f"log-{rank}.txt"), "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "gimlet.runtime.worker", bundle.path, *args],
                        env=dict(base, RANK=str(rank), LOCAL_RANK=str(rank)),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, killed as one
                    )
                )
    except BaseException:
        _kill_all(procs)
        raise
    return procs


def _supervise(
    bundle: Bundle, run_dir: str, procs: list[subprocess.Popen[bytes]], done: Any
) -> None:
    """Poll until `done()` is true; on the first failure, give the others GRACE_S to report,
    kill every worker and raise one RunError naming the root cause."""
    failed_at = None
    while True:
        codes = [p.poll() for p in procs]
        if done(codes):
            return
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.time()
        if failed_at is not None and (
            time.time() - failed_at > GRACE_S or all(c is not None for c in codes)
        ):
            _kill_all(procs)
            raise RunError(_diagnose(bundle, run_dir, procs), [p.pid for p in procs])
        time.sleep(POLL_S)


def _read_stats(bundle: Bundle, run_dir: str) -> list[dict[str, Any]]:
    stats = []
    for rank in range(len(bundle.devices)):
        with open(os.path.join(run_dir, f"stats-{rank}.json")) as f:
            stats.append(json.load(f))
    return stats


def launch(
    bundle_path: str,
    inputs: list[np.ndarray],
    *,
    target: str | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    iterations: int = 1,
) -> RunResult:
    """Check the bundle, start the workers, return the host's outputs or raise RunError.

    `iterations` > 1 runs the program that many times in the same workers (each rank's
    per-iteration seconds are in `stats[rank]["iterations_s"]`): how benchmarks separate
    steady-state latency from process start-up."""
    bundle = load_bundle(bundle_path)
    if target:
        check_cluster(bundle, target)
    inputs = [np.asarray(x) for x in inputs]
    check_inputs(bundle, inputs)
    run_dir = tempfile.mkdtemp(prefix="gimlet-run-")
    procs: list[subprocess.Popen[bytes]] = []
    start = time.time()
    try:
        in_path = os.path.join(run_dir, "inputs.npz")
        _save_inputs(in_path, inputs)
        args = ["--inputs", in_path, "--iterations", str(iterations)]
        procs = _start(bundle, run_dir, args, timeout_s, env)
        _supervise(bundle, run_dir, procs, lambda codes: all(c == 0 for c in codes))
        outputs = _load_outputs(bundle, os.path.join(run_dir, "outputs.npz"))
        stats = _read_stats(bundle, run_dir)
        return RunResult(outputs, stats, [p.pid for p in procs], time.time() - start)
    finally:
        _kill_all(procs)
        shutil.rmtree(run_dir, ignore_errors=True)


class Session:
    """Workers that stay up between requests (`gimletc run` starts fresh ones per run;
    `gimlet.load` keeps one Session). Start-up (torch import, IR parse, library loads)
    is paid once; a request costs a file handoff and a broadcast. A failed request
    kills the workers; the next request starts new ones."""

    def __init__(
        self, bundle: Bundle, timeout_s: float | None = None, env: dict[str, str] | None = None
    ):
        self.bundle, self.timeout_s, self.env = bundle, timeout_s, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.run_dir = ""
        self.k = 0

    def _ensure_started(self) -> None:
        if self.procs and all(p.poll() is None for p in self.procs):
            return
        self.close()
        self.run_dir = tempfile.mkdtemp(prefix="gimlet-serve-")
        self.k = 0
        self.procs = _start(self.bundle, self.run_dir, ["--serve"], self.timeout_s, self.env)

    def __call__(self, inputs: list[np.ndarray]) -> RunResult:
        inputs = [np.asarray(x) for x in inputs]
        check_inputs(self.bundle, inputs)
        start = time.time()
        self._ensure_started()
        self.k += 1
        k, run_dir = self.k, self.run_dir
        tmp = os.path.join(run_dir, f"req-{k}.tmp.npz")
        _save_inputs(tmp, inputs)
        os.replace(tmp, os.path.join(run_dir, f"req-{k}.npz"))
        out = os.path.join(run_dir, f"out-{k}.npz")

        def done(codes: list[int | None]) -> bool:
            return os.path.exists(out) and all(
                _request_of(run_dir, rank) == k for rank in range(len(codes))
            )

        try:
            _supervise(self.bundle, run_dir, self.procs, done)
        except RunError:
            self.close()
            raise
        outputs = _load_outputs(self.bundle, out)
        stats = _read_stats(self.bundle, run_dir)
        for name in (f"req-{k}.npz", f"out-{k}.npz"):
            os.unlink(os.path.join(run_dir, name))
        return RunResult(outputs, stats, [p.pid for p in self.procs], time.time() - start)

    def close(self) -> None:
        """Ask the workers to stop, give them a moment, then make sure they are gone."""
        if self.procs:
            with contextlib.suppress(OSError):
                open(os.path.join(self.run_dir, "stop"), "w").close()
            deadline = time.time() + 5
            while time.time() < deadline and any(p.poll() is None for p in self.procs):
                time.sleep(POLL_S)
            _kill_all(self.procs)
            self.procs = []
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = ""


def _request_of(run_dir: str, rank: int) -> int:
    try:
        with open(os.path.join(run_dir, f"stats-{rank}.json")) as f:
            return int(json.load(f).get("request", 0))
    except (OSError, ValueError):
        return 0


def _load_outputs(bundle: Bundle, path: str) -> list[np.ndarray]:
    import ml_dtypes

    data = np.load(path)
    outs = []
    for i, sig in enumerate(bundle.manifest["outputs"]):
        a = data[f"out{i}"]
        outs.append(a.view(ml_dtypes.bfloat16) if sig["dtype"] == "bfloat16" else a)
    return outs


def _diagnose(bundle: Bundle, run_dir: str, procs: list[subprocess.Popen[bytes]]) -> str:
    """The root cause: an error a worker raised, else a worker that died, else a timeout."""
    reports: dict[int, dict[str, Any]] = {}
    for rank in range(len(procs)):
        path = os.path.join(run_dir, f"error-{rank}.json")
        if os.path.isfile(path):
            with open(path) as f:
                reports[rank] = json.load(f)
    died, busy = [], []
    for rank, p in enumerate(procs):
        if rank in reports:
            continue
        where = _status(run_dir, rank)
        if p.returncode in (None, -signal.SIGKILL):  # still running when the run failed
            busy.append(f"{bundle.devices[rank]} (rank {rank}) was{where or ' running'}")
        elif p.returncode != 0:
            died.append(
                f"{bundle.devices[rank]} (rank {rank}) died with exit code {p.returncode}{where}"
            )
    order = {"error": 0, "timeout": 2, "peer": 3}
    errors = sorted(reports.values(), key=lambda r: (order.get(r["kind"], 1), r["rank"]))
    if errors and errors[0]["kind"] == "error":
        first = errors[0]["message"]
    elif died:
        first = died[0]
    elif errors:
        first = errors[0]["message"]
    else:
        first = "a worker failed without a report"
    lines = [f"worker {first}"]
    others = [r["message"] for r in errors if r["message"] != first] + died[1:]
    lines += [f"  also: {m}" for m in others[:4]]
    # a timeout names who waited; where the others were says who it waited for
    if errors and errors[0]["kind"] == "timeout" and first == errors[0]["message"]:
        lines += [f"  meanwhile: {m}" for m in busy[:4]]
    return "\n".join(lines)


def _status(run_dir: str, rank: int) -> str:
    """' in segment S at OP' from a worker's status file (what it was about to run)."""
    path = os.path.join(run_dir, f"status-{rank}")
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        raw = f.read().strip()
    try:
        st = json.loads(raw) if raw else {}
    except ValueError:
        return ""
    where = f" in segment {st['segment']}" if st.get("segment") is not None else ""
    return where + (f" at {st['op']}" if st.get("op") else "")


class Loaded:
    """`gimlet.load(bundle)`: call with torch tensors, get a tuple of torch tensors back.

    The workers start on the first call and stay up (a `Session`) until `close()`, the
    end of a `with` block, or garbage collection. The bundle is checked once, here."""

    def __init__(self, bundle: str, *, target: str | None = None, timeout_s: float | None = None):
        import weakref

        self.bundle = load_bundle(bundle)
        if target:
            check_cluster(self.bundle, target)
        self.session = Session(self.bundle, timeout_s)
        self.last: RunResult | None = None
        self._finalizer = weakref.finalize(self, self.session.close)

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        from gimlet.dtypes import numpy_to_torch, torch_to_numpy

        arrays = [torch_to_numpy(x) if hasattr(x, "detach") else np.asarray(x) for x in inputs]
        self.last = self.session(arrays)
        return tuple(numpy_to_torch(np.array(o)) for o in self.last.outputs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Loaded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
