"""Run a bundle on this host: one worker process per device, the caller as supervisor.

Why a supervisor rather than trusting the workers: a worker that dies outright cannot
tell its peers, and a peer blocked in a receive only notices when its deadline expires.
The caller waits on every worker's control socket at once (runtime/control.py): a
report, an answer or a closed socket (a dead worker) wakes it. On the first failure it
gives the others a moment to report, then kills every worker's process group and reaps
it (no zombies, no orphans), and raises one `RunError` naming the device, segment and op.

Everything that can be rejected without workers (tampered files, wrong cluster, inputs
that do not fit the signature) is rejected before any process starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from gimlet.errors import UserError
from gimlet.runtime.bundle import Bundle, check_cluster, check_inputs, load_bundle
from gimlet.runtime.control import (
    Arena,
    LocalSlot,
    StatusPage,
    grow,
    recv_msg,
    send_msg,
)
from gimlet.runtime.pipeline import check_split

GRACE_S = 0.5  # after the first failure, how long to wait for the others' reports
STOP_S = 5.0  # how long close() lets workers stop on their own before killing them


class RunError(UserError):
    """A run that failed; `pids` are the (reaped) worker processes."""

    def __init__(self, message: str, pids: list[int]):
        super().__init__(message)
        self.pids = pids


@dataclass
class RunResult:
    outputs: list[np.ndarray]
    stats: list[dict[str, Any]]  # per rank: device, segments {index: {...}}, events
    pids: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    kernel_s: float = 0.0  # time in compiled parts (every rank's): the rest is the runtime's
    # where a multi-process request's wall time went, in the caller: "send" (inputs into
    # the arena, the workers told), "wait" (until every worker answered; of it, the host
    # worker's own run "host_run", and its answer's arrival "host_answered"), "copy" (the
    # outputs out of the shared arena)
    phases: dict[str, float] = field(default_factory=dict)
    handed: bool = False  # the outputs are views of an arena the caller now owns (worker.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def launch(
    bundle_path: str,
    inputs: list[np.ndarray],
    *,
    target: str | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    iterations: int = 1,
    micro_batches: int = 1,
) -> RunResult:
    """Check the bundle, start the workers, run, stop them; the host's outputs and every
    rank's stats (per segment, trace events, `iterations_s`), or a RunError.

    `iterations` > 1 runs that many requests in the same workers (each rank's
    per-request seconds are in `stats[rank]["iterations_s"]`): how benchmarks separate
    steady-state latency from process start-up. `micro_batches`: see runtime/pipeline.py."""
    bundle = load_bundle(bundle_path)
    if target:
        check_cluster(bundle, target)
    inputs = [np.asarray(x) for x in inputs]
    start = time.time()
    session = Session(bundle, timeout_s, env, stats=True, micro_batches=micro_batches)
    session.check(inputs)
    try:
        for _ in range(max(iterations, 1)):
            result = session(inputs)
        stats = session.totals()
        return RunResult(result.outputs, stats, result.pids, time.time() - start)
    finally:
        session.close()


class Session:
    """Workers that stay up between requests. Start-up (torch import, IR parse, library
    loads) is paid on the first request; a request then costs a message to each worker,
    a copy of the inputs into shared memory and one of the outputs out of it. A failed
    request kills the workers; the next request starts new ones.

    `stats=True` asks every worker for its per-segment times and trace events with each
    answer (`totals()` sums them over the requests); `deadline_s` bounds a whole request
    once every worker is up (by default only the workers' receive timeouts do).

    `host_in_caller=True` (what `gimlet.load` asks for; see `can_host_in_caller`) runs
    the host device's share of the program in the caller's process (`call`, torch
    tensors in and out): the caller is the host rank, its channels to the workers are
    their shared-memory slots, and a two-device bundle costs one hop to a worker and
    one back instead of four (to the host worker, between the workers twice, back)."""

    def __init__(
        self,
        bundle: Bundle,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        *,
        stats: bool = False,
        deadline_s: float | None = None,
        host_in_caller: bool = False,
        module: Any = None,
        micro_batches: int = 1,
    ):
        self.bundle, self.timeout_s, self.env = bundle, timeout_s, env
        self.micro_batches = micro_batches
        if micro_batches != 1:
            self._check_pipeline(module)
        self.stats, self.deadline_s = stats, deadline_s
        # after the host answers, the others have a receive timeout to finish
        self.late_s = timeout_s if timeout_s is not None else _default_timeout()
        self.procs: list[subprocess.Popen[bytes]] = []  # one per rank in self.ranks
        self.socks: list[socket.socket] = []
        self.sock_of: dict[int, socket.socket] = {}
        self.rank_of: dict[int, int] = {}  # socket fileno -> rank
        self.selector: selectors.BaseSelector | None = None
        self.status: StatusPage | None = None
        self.arena: Arena | None = None  # the inputs, written here
        self.outputs: Arena | None = None  # the host's outputs, mapped here
        self.handed: dict[int, Arena] = {}  # the host's handed output arenas, by id (worker.py)
        self.log_dir = ""
        self.k = 0
        self.ready: set[int] = set()  # ranks that said they are up (start-up is over)
        self.host_rank = bundle.devices.index(bundle.host)
        self._totals: list[dict[str, Any]] = []
        self.local: Any = None  # the host's share (an InProcess), when host_in_caller
        self.slots: dict[int, LocalSlot] = {}  # the caller's ends of the host's channels
        self.last: RunResult | None = None  # the last `call`
        self._req: _Request | None = None
        # a pipelined request keeps every device on a worker: the caller would be the
        # host rank, which sends the first micro-batches and receives the last ones
        pipelined = micro_batches > 1
        if host_in_caller and not stats and not pipelined and can_host_in_caller(bundle, env):
            from gimlet.runtime.inprocess import InProcess

            self.local = InProcess(
                bundle, module=module, devices=[bundle.host], remote=self, passthrough=(RunError,)
            )
        n = len(bundle.devices)
        self.ranks = [r for r in range(n) if self.local is None or r != self.host_rank]

    def check(self, inputs: list[np.ndarray]) -> None:
        """Refuse inputs that do not fit the signature (each micro-batch's, when
        pipelined), before any worker starts."""
        m = self.micro_batches
        if m > 1:  # each micro-batch must fit the signature the bundle was compiled for
            check_split([x.shape for x in inputs], m)
            check_inputs(self.bundle, [x[: x.shape[0] // m] for x in inputs], m)
        else:
            check_inputs(self.bundle, inputs)

    def _check_pipeline(self, module: Any) -> None:
        """Refuse, before any worker starts, a pipelined session whose program, inputs or
        outputs cannot be cut into micro-batches (runtime/pipeline.py)."""
        from gimlet.ir import main_func
        from gimlet.runtime.inprocess import parse_program
        from gimlet.runtime.pipeline import check_bundle

        fn = main_func(module or parse_program(self.bundle))
        check_bundle(fn, self.bundle.host, self.bundle.manifest, self.micro_batches)

    # -- start and stop

    def _ensure_started(self) -> None:
        if self.procs and all(p.poll() is None for p in self.procs):
            return
        self.close()
        n = len(self.bundle.devices)
        self.log_dir = tempfile.mkdtemp(prefix="gimlet-workers-")
        self.status = StatusPage(n)
        self.selector = selectors.DefaultSelector()
        self.k = 0
        self.ready = set()
        self._totals = [
            {"device": d, "segments": {}, "events": [], "iterations_s": []}
            for d in self.bundle.devices
        ]
        base = dict(os.environ)
        base.update(self.env or {})
        slots = _local_slots(self.bundle, base, self.micro_batches)
        base.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
            WORLD_SIZE=str(n),
            GIMLET_STATUS_FD=str(self.status.fd),
            GIMLET_LOCAL_CHANNELS=LocalSlot.encode(slots),
        )
        fds = [fd for memfd, eventfd, *_ in slots.values() for fd in (memfd, eventfd)]
        if self.local is not None:  # the caller keeps its ends of the host's channels
            host = self.bundle.host
            for c in self.bundle.manifest["channels"]:
                if host in (c["from"], c["to"]):
                    memfd, eventfd, capacity, entries = slots[c["id"]]
                    self.slots[c["id"]] = LocalSlot(
                        os.dup(memfd), os.dup(eventfd), capacity, entries
                    )
        if self.timeout_s is not None:
            base["GIMLET_RECV_TIMEOUT"] = str(self.timeout_s)
        base.pop("GIMLET_EARLY_ANSWERS", None)
        if self.local is not None:  # see _settle
            base["GIMLET_EARLY_ANSWERS"] = "1"
        try:
            for rank in self.ranks:
                mine, theirs = socket.socketpair()
                self.socks.append(mine)
                self.sock_of[rank] = mine
                self.rank_of[mine.fileno()] = rank
                self.selector.register(mine, selectors.EVENT_READ, rank)
                with (
                    theirs,
                    open(os.path.join(self.log_dir, f"log-{rank}.txt"), "wb") as log,
                ):
                    env = dict(
                        base,
                        RANK=str(rank),
                        LOCAL_RANK=str(rank),
                        GIMLET_CONTROL_FD=str(theirs.fileno()),
                    )
                    self.procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "gimlet.runtime.worker", self.bundle.path]
                            + ["--serve"],
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            pass_fds=(theirs.fileno(), self.status.fd, *fds),
                            start_new_session=True,  # its own process group, killed as one
                        )
                    )
        except BaseException:
            self.close()
            raise
        finally:
            for fd in fds:  # the workers hold them now
                os.close(fd)

    def close(self) -> None:
        """Ask the workers to stop, give them a moment, then make sure they are gone."""
        for sock in self.socks:
            with contextlib.suppress(OSError):
                send_msg(sock, ("stop",))
        deadline = time.time() + STOP_S
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(deadline - time.time(), 0.0))
        _kill_all(self.procs)
        self.procs = []
        for sock in self.socks:
            sock.close()
        self.socks, self.sock_of, self.rank_of = [], {}, {}
        if self.selector is not None:
            self.selector.close()
            self.selector = None
        for slot in self.slots.values():
            slot.close()
        self.slots = {}
        self.arena = self.outputs = None
        self.handed = {}
        if self.log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir = ""

    # -- a request

    def __call__(self, inputs: list[np.ndarray]) -> RunResult:
        inputs = [np.asarray(x) for x in inputs]
        self.check(inputs)
        m = self.micro_batches
        if self.local is not None:  # numpy in and out, as with a host worker
            from gimlet.runtime.inprocess import to_host

            outputs = [np.array(to_host(t)) for t in self.call(*inputs)]
            assert self.last is not None
            self.last.outputs = outputs
            return self.last
        start = time.time()
        self._ensure_started()
        self.k += 1
        k = self.k
        offsets, need = Arena.layout(inputs)
        self.arena, fresh = grow(self.arena, need)
        meta = self.arena.write(inputs, offsets)
        free, drop = self._released_outputs()
        # the others first: they wake while the host reads its inputs
        order = [r for r in self.ranks if r != self.host_rank] + [self.host_rank]
        for rank in order:
            sock = self.sock_of[rank]
            try:
                if rank == self.host_rank:
                    fds = [self.arena.fd] if fresh and self.arena.fd is not None else []
                    msg = ("run", k, (self.arena.size, meta), self.stats, m, (free, drop))
                    send_msg(sock, msg, fds)
                else:
                    send_msg(sock, ("run", k, None, self.stats, m))
            except OSError:
                pass  # it died: the wait below finds its closed socket and says so
        if fresh:
            self.arena.sent()
        req = self._req = _Request(k, start if len(self.ready) == len(self.ranks) else _NEVER)
        req.pending = set(self.ranks)
        sent = time.time()
        answers = self._wait(req)
        answered = time.time()
        size, where, handed = answers[self.host_rank][0]
        fds = answers[self.host_rank][1]
        if handed is not None:  # large outputs: views of a handed arena, no copy (worker.py)
            if fds:
                self.handed[handed] = Arena(size, fds[0])
                self.handed[handed].sent()
            outputs = self.handed[handed].views(where)  # in use while they (or views) live
        else:
            if fds:
                self.outputs = Arena(size, fds[0])
                self.outputs.sent()
            assert self.outputs is not None
            # copies: the arena is reused by the next request, the caller keeps these
            outputs = [np.array(v) for v in self.outputs.views(where)]
        copied = time.time()
        stats = []
        kernel_s = 0.0
        for rank, (_, _, st, seconds, kernels) in sorted(answers.items()):
            kernel_s += kernels
            if st is not None:  # only when asked for: a long-lived session keeps nothing
                total = self._totals[rank]
                total["iterations_s"].append(seconds)
                _accumulate(total, st)
                stats.append(dict(st, iterations_s=[seconds]))
        pids = [p.pid for p in self.procs]
        phases = {
            "send": sent - start,
            "wait": answered - sent,
            "host_run": answers[self.host_rank][3],
            "host_answered": (req.host_at or answered) - sent,
            "copy": copied - answered,
        }
        return RunResult(
            outputs, stats, pids, time.time() - start, kernel_s, phases, handed is not None
        )

    def _released_outputs(self) -> tuple[list[int], list[int]]:
        """The handed output arenas whose arrays nobody holds any more (the host may write
        them again), and those beyond KEEP_FREE of them, unmapped here and there."""
        # a reference from the Arena, one from getrefcount's argument: any more are the
        # base of an output array (or of a tensor or view made from one) still alive
        free = [i for i, a in self.handed.items() if sys.getrefcount(a.map) <= 2]
        drop = free[KEEP_FREE:]
        for i in drop:
            del self.handed[i]
        return free[:KEEP_FREE], drop

    def call(self, *inputs: Any) -> list[Any]:
        """A request with the host's share in this process (host_in_caller): torch
        tensors (or arrays) in, torch tensors out, on the inputs' device. `.last` says
        what it cost."""
        local = self.local
        assert local is not None, "call() needs host_in_caller"
        local._sig.check(inputs)  # bad inputs: refused before anything starts
        start = time.time()
        self._settle()
        self._ensure_started()
        self.k += 1
        k = self.k
        for rank in self.ranks:
            with contextlib.suppress(OSError):  # a dead worker: its closed socket says so
                send_msg(self.sock_of[rank], ("run", k, None, False))
        req = self._req = _Request(k, start if len(self.ready) == len(self.ranks) else _NEVER)
        req.pending = set(self.ranks)
        try:
            outputs = local(*inputs)
        except RunError:
            raise  # a worker's failure, diagnosed (and the workers stopped) by take()
        except BaseException as e:
            # the host's share failed here (or was interrupted): the workers wait for it
            # mid-request, so they go too; the next call starts new ones
            pids = [p.pid for p in self.procs]
            _kill_all(self.procs)
            self.close()
            if isinstance(e, Exception):
                raise RunError(str(e), pids) from e
            raise
        req.host_at = time.time()
        # the workers' answers are collected when the next request starts (`_settle`):
        # every value for the host is here, so waiting for them would only add a wake-up;
        # their compiled parts' time is in the status page already
        assert self.status is not None
        kernel_s = local.kernel_s + sum(self.status.kernel(r) for r in self.ranks)
        self.last = RunResult([], [], [p.pid for p in self.procs], time.time() - start, kernel_s)
        return outputs

    def _settle(self) -> None:
        """Collect the last request's answers (a request starts only when every worker
        finished the last: each channel's slot holds one message). They are usually
        there already. A worker that failed or died after it sent the host everything
        it had to send did not fail that request: it is replaced, not reported."""
        req = self._req
        if req is None or not req.pending or not self.procs:
            return
        assert self.status is not None
        for rank in list(req.pending):
            if self.status.done(rank) == req.k:  # answered in the status page
                req.pending.discard(rank)
        if req.pending:
            with contextlib.suppress(RunError):  # _fail stopped them: new ones will start
                self._wait(req)

    # -- the host's channels to the workers (host_in_caller), for the InProcess

    def send(self, channel: int, value: Any) -> None:
        self.slots[channel].put(value)

    def take(self, channel: int) -> Any:
        """The value on a channel from a worker: a blocking wait on its eventfd and every
        worker's socket (a report or a death wakes it too), with the receive timeout and
        the request's deadline; a failure is diagnosed and raised as a RunError."""
        slot, req = self.slots[channel], self._req
        assert req is not None
        since = time.time()
        efd = slot.eventfd
        if slot.ready:  # counted off the eventfd with an earlier message (a ring holds several)
            return slot.take(0.0)
        while True:
            limit = self._limit(req)
            if len(self.ready) == len(self.ranks):  # the receive timeout, once all are up
                limit = min(limit, max(since, req.start) + self.late_s)
            # every worker's socket: a report or a death wakes the wait (a worker that
            # answered in the status page, before its last send, can still fail in it)
            fds = [efd, *(s.fileno() for s in self.sock_of.values())]
            timeout = None if limit == _NEVER else max(limit - time.time(), 0.0)
            ready, _, _ = select.select(fds, [], [], timeout)
            if efd in ready:
                return slot.take_ready()
            for fd in ready:
                self._on_message(req, self.rank_of[fd])
            if req.failed_at is not None:
                self._wait(req)  # the others' reports, then the diagnosis (raises)
            if not ready and time.time() >= limit:
                if req.deadline_hit(self.deadline_s, time.time()):
                    req.why = f"request {req.k} did not finish within {self.deadline_s:g}s"
                else:
                    src = next(c["from"] for c in self.bundle.manifest["channels"]
                               if c["id"] == channel)  # fmt: skip
                    req.why = (
                        f"{self.bundle.host} (in the caller) timed out after "
                        f"{self.late_s:g}s waiting for channel {channel} from {src}"
                    )
                self._fail(req)

    # -- waiting for the workers

    def totals(self) -> list[dict[str, Any]]:
        """Every rank's stats summed over the requests since the workers started."""
        return self._totals

    def _limit(self, req: _Request) -> float:
        """When the request's wait ends: the first failure leaves the others GRACE_S to
        report, after the host answered the others have the receive timeout to finish,
        and `deadline_s` bounds the request from when every worker is up."""
        limits = [_NEVER]
        if req.failed_at is not None:
            limits.append(req.failed_at + GRACE_S)
        if req.host_at is not None:
            limits.append(req.host_at + self.late_s)
        if self.deadline_s is not None and req.start != _NEVER:
            limits.append(req.start + self.deadline_s)
        return min(limits)

    def _on_message(self, req: _Request, rank: int) -> None:
        """Read one message from `rank`'s socket into the request's state."""
        assert self.selector is not None
        sock = self.sock_of[rank]
        try:
            msg, fds = recv_msg(sock)
        except (EOFError, OSError):  # it died: its socket closed
            self.selector.unregister(sock)
            req.pending.discard(rank)
            req.failed_at = req.failed_at or time.time()
            return
        if msg[0] == "ready":
            self.ready.add(rank)
            if len(self.ready) == len(self.ranks):  # start-up is over: the deadline starts
                req.start = time.time()
        elif msg[0] == "done" and msg[1] == req.k:
            req.answers[rank] = (msg[2], fds, msg[3], msg[4], msg[5])
            req.pending.discard(rank)
            if rank == self.host_rank:
                req.host_at = time.time()
        elif msg[0] == "error":
            req.reports[rank] = msg[1]
            req.pending.discard(rank)
            req.failed_at = req.failed_at or time.time()

    def _wait(self, req: _Request) -> dict[int, tuple[Any, list[int], Any, float, float]]:
        """Every worker's answer to the request: {rank: (outputs, fds, stats, seconds,
        seconds in compiled parts)}. Blocks in select() until they all answered, or a
        limit (`_limit`) passed; then diagnoses and raises."""
        assert self.selector is not None
        while req.pending:
            limit = self._limit(req)
            timeout = None if limit == _NEVER else max(limit - time.time(), 0.0)
            events = self.selector.select(timeout)
            if not events and time.time() >= limit:
                if req.failed_at is None:
                    req.why = (
                        f"request {req.k} did not finish within {self.deadline_s:g}s"
                        if req.host_at is None
                        else f"did not finish request {req.k} within {self.late_s:g}s of the "
                        "outputs"
                    )
                break
            for key, _ in events:
                self._on_message(req, key.data)
        if req.failed_at is None and not req.why:
            return req.answers
        self._fail(req)

    def _fail(self, req: _Request) -> NoReturn:
        """Diagnose the request's failure, kill every worker, raise one RunError."""
        n = len(self.bundle.devices)
        pids = [p.pid for p in self.procs]
        statuses = [self._status(rank) for rank in range(n)]
        answers: dict[int, Any] = dict(req.answers)
        if self.local is not None:
            answers[self.host_rank] = None  # the caller: it is here, not a worker
        procs = dict(zip(self.ranks, self.procs, strict=True))
        # exit codes before ours: a worker whose socket closed is exiting, give it a moment
        for rank, p in procs.items():
            if rank not in req.reports and rank not in answers and rank not in req.pending:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=GRACE_S)
        codes = [procs[r].poll() if r in procs else 0 for r in range(n)]
        _kill_all(self.procs)
        message = _diagnose(self.bundle, req.reports, codes, statuses, req.why, answers)
        message += _log_tail(self.log_dir, codes, req.reports)
        self.close()
        raise RunError(message, pids)

    def _status(self, rank: int) -> str:
        """' in segment S at OP' from the worker's status slot (what it was about to run)."""
        assert self.status is not None
        raw = self.status.read(rank)
        try:
            st = json.loads(raw) if raw else {}
        except ValueError:
            return ""
        where = f" in segment {st['segment']}" if st.get("segment") is not None else ""
        return where + (f" at {st['op']}" if st.get("op") else "")


_NEVER = float("inf")


@dataclass
class _Request:
    """What the caller knows about one request while it waits."""

    k: int
    start: float  # when the deadline started (_NEVER until every worker is up)
    pending: set[int] = field(default_factory=set)  # ranks yet to answer
    answers: dict[int, tuple[Any, list[int], Any, float, float]] = field(default_factory=dict)
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed_at: float | None = None
    host_at: float | None = None  # when the host answered (the caller, host_in_caller)
    why: str = ""

    def deadline_hit(self, deadline_s: float | None, now: float) -> bool:
        return deadline_s is not None and self.start != _NEVER and now >= self.start + deadline_s


KEEP_FREE = 2  # handed output arenas kept for reuse when free (a request, the next one)


def can_host_in_caller(bundle: Bundle, env: dict[str, str] | None = None) -> bool:
    """Whether the caller can be the host rank: some other device runs a segment (else
    there is no worker to talk to, and asking for workers means wanting one), and every
    channel goes through shared memory (none through torch.distributed, which the
    caller does not join: not NCCL's, and GIMLET_TRANSPORT is not gloo)."""
    merged = dict(os.environ)
    merged.update(env or {})
    if merged.get("GIMLET_TRANSPORT") == "gloo":
        return False
    if any(c.get("backend") == "nccl" for c in bundle.manifest["channels"]):
        return False
    return any(s["device"] != bundle.host for s in bundle.manifest["segments"])


def _local_slots(
    bundle: Bundle, env: dict[str, str], entries: int = 1
) -> dict[int, tuple[int, int, int, int]]:
    """A shared-memory slot (memfd, eventfd, capacity, entries) for every channel that is
    not NCCL's: the workers are on this host, so they need not go through gloo's sockets
    (runtime/channels.py). `entries`: messages a slot holds (a request's micro-batches).
    GIMLET_TRANSPORT=gloo keeps every channel on gloo."""
    if env.get("GIMLET_TRANSPORT") == "gloo":
        return {}
    slots = {}
    for c in bundle.manifest["channels"]:
        if c.get("backend") == "nccl":
            continue  # NCCL where the workers have CUDA, gloo where they do not
        capacity = LocalSlot.capacity_for(c["dtype"], c["shape"])
        slots[c["id"]] = LocalSlot.create(f"gimlet-ch{c['id']}", capacity, entries)
    return slots


def _default_timeout() -> float:
    from gimlet.runtime.worker import DEFAULT_TIMEOUT_S

    return float(os.environ.get("GIMLET_RECV_TIMEOUT", DEFAULT_TIMEOUT_S))


def _accumulate(total: dict[str, Any], st: dict[str, Any]) -> None:
    for index, seg in st["segments"].items():
        into = total["segments"].setdefault(
            index, {"ops": seg["ops"], "bytes_in": 0, "bytes_out": 0}
        )
        into["wall_s"] = into.get("wall_s", 0.0) + seg.get("wall_s", 0.0)
        into["bytes_in"] += seg["bytes_in"]
        into["bytes_out"] += seg["bytes_out"]
    total["events"].extend(st["events"])


def _diagnose(
    bundle: Bundle,
    reports: dict[int, dict[str, Any]],
    codes: list[int | None],
    statuses: list[str],
    why: str,
    answers: dict[int, Any],
) -> str:
    """The root cause: an error a worker raised, else a worker that died, else a timeout
    (a worker's receive, or the caller's deadline). `codes`: exit codes before the
    caller killed anyone (None: still running)."""
    died, busy = [], []
    for rank, code in enumerate(codes):
        if rank in reports or rank in answers:
            continue
        where = statuses[rank]
        if code is None:  # still running when the run failed
            busy.append(f"{bundle.devices[rank]} (rank {rank}) was{where or ' running'}")
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            died.append(f"{bundle.devices[rank]} (rank {rank}) was killed by {name}{where}")
        elif code != 0:
            died.append(f"{bundle.devices[rank]} (rank {rank}) died with exit code {code}{where}")
    order = {"error": 0, "timeout": 2, "peer": 3}
    errors = sorted(reports.values(), key=lambda r: (order.get(r["kind"], 1), r["rank"]))
    if errors and errors[0]["kind"] == "error":
        first = errors[0]["message"]
    elif died:
        first = died[0]
    elif errors:
        first = errors[0]["message"]
    elif why and busy:  # nobody failed, someone never finished
        first, busy = f"{busy[0]} and {why}", busy[1:]
    else:
        first = why or "a worker failed without a report"
    lines = [f"worker {first}"]
    others = [r["message"] for r in errors if r["message"] != first] + died[1:]
    lines += [f"  also: {m}" for m in others[:4]]
    # a timeout names who waited; where the others were says who it waited for
    if busy and (
        why or (errors and errors[0]["kind"] == "timeout" and first == errors[0]["message"])
    ):
        lines += [f"  meanwhile: {m}" for m in busy[:4]]
    return "\n".join(lines)


def _log_tail(log_dir: str, codes: list[int | None], reports: dict[int, Any]) -> str:
    """The last lines a worker that died without a report printed (a C++ abort says why)."""
    out = []
    for rank, code in enumerate(codes):
        if rank in reports or code in (None, 0) or not log_dir:
            continue
        try:
            with open(os.path.join(log_dir, f"log-{rank}.txt"), "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            continue
        out += [f"  rank {rank} printed: {line}" for line in lines[-3:]]
    return "".join("\n" + line for line in out)
