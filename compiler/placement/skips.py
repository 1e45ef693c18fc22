"""Values that skip ahead, tracked exactly in the state of dp.py's recurrences.

dp's position model charges a value that skips ahead (a residual, a mask read by every
block) at every device switch while it is live. An answer that leaves a device and comes
back (host, GPU, host, ...) then looks dearer than it is: the value never left the host.
Linearising around an answer is exact for that answer and for single moves, but not for a
producer and its skip reader moving together, and the improvement can stop short of such
an answer (GPT on b200+sram+cpu for throughput was 1.8% off the MILP that way).

Here the most expensive such values are tracked exactly. The DP's state at position i
becomes (device of node i, context), the context holding, for every tracked value live
across i (produced at or before i, read after i), its producer's device and the set of
devices it has reached so far. A reader on d pays transfer(producer's device, d) exactly
when d is not yet in that set, which is what `evaluate` charges, so the model is exact for
those values whatever moves together. The contexts per position (the product of the live
tracked values' code counts) are capped: values are taken most expensive first while the
cap holds, and the rest stay with the position model (or its linearisation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from gimlet.placement.solvers import Problem

Code = tuple[int, int]  # (producer's device, bit mask of the devices holding the value)


@dataclass
class Contexts:
    """The tracked values' part of the DP state, position by position.

    size[i]      contexts at position i (1 where no tracked value is live)
    step[i]      [size[i-1], D] the context at i when node i runs on d after context c at
                 i-1 (step[0] has one row: nothing is live before node 0)
    extra[i]     [size[i-1], D] what device d receives for the tracked values node i
                 reads (objective units: seconds, or x W or $/s for energy and cost)
    tracked      indices into p.edges of the values tracked here
    """

    size: list[int]
    step: list[np.ndarray]
    extra: list[np.ndarray]
    tracked: frozenset[int]

    @functools.cached_property
    def widest(self) -> int:
        return max(self.size, default=1)

    def walk(self, assign: list[int] | np.ndarray) -> np.ndarray:
        """[D] what each device receives for tracked values under `assign`."""
        D = self.step[0].shape[1]
        got = np.zeros(D)
        c = 0
        for i, d in enumerate(assign):
            got[d] += self.extra[i][c, d]
            c = int(self.step[i][c, d])
        return got


def no_contexts(n: int, D: int) -> Contexts:
    """Nothing tracked: the state is the device alone."""
    step = np.zeros((1, D), dtype=np.int64)
    extra = np.zeros((1, D))
    return Contexts([1] * n, [step] * n, [extra] * n, frozenset())


def track_skips(p: Problem, limit: int) -> Contexts:
    """Track the values that skip ahead, dearest first, while every position has at most
    `limit` contexts."""
    n, D = p.time.shape
    if limit <= 1 or n == 0:
        return no_contexts(n, D)
    feasible = [[int(d) for d in np.flatnonzero(np.isfinite(p.time[i]))] for i in range(n)]
    width = np.ones(n)  # contexts per position so far
    chosen = []
    for k in sorted(_candidates(p), key=lambda k: -_worth(p, k)):
        u, consumers, _ = p.edges[k]
        stages = _stages(feasible, u, consumers)
        counts = _counts_by_position(stages, u, consumers)
        span = width[u : consumers[-1]]
        if (span * counts).max() <= limit:
            width[u : consumers[-1]] = span * counts
            chosen.append(_Value.of(p, k, stages))
    if not chosen:
        return no_contexts(n, D)
    return _build(p, sorted(chosen, key=lambda v: v.edge))


def _candidates(p: Problem) -> list[int]:
    """Values read by a node other than the next one, whose transfers each cost the same
    number of runs (with --repeat, a value's runs can depend on which reader comes first on
    a device; those stay with the position model)."""
    out = []
    for k, (u, consumers, _) in enumerate(p.edges):
        if consumers == [u + 1]:
            continue  # a switch at u + 1 charges it exactly already
        runs = p.runs_of(u, consumers)
        if all(p.runs_of(u, [c]) == runs for c in consumers):
            out.append(k)
    return out


def _worth(p: Problem, k: int) -> float:
    """What the position model can over-charge a value: its dearest route, per position it
    is live across."""
    u, consumers, nbytes = p.edges[k]
    D = len(p.devices)
    dearest = max(p.transfer(x, y, nbytes) for x in range(D) for y in range(D))
    return dearest * p.runs_of(u, consumers) * (consumers[-1] - u)


def _stages(feasible: list[list[int]], u: int, consumers: list[int]) -> list[list[Code]]:
    """The codes a value can have after its producer (stage 0) and after each of its
    readers but the last (stage s: s readers done): every producer device, and every set of
    devices the readers so far can have reached."""
    stages = [[(x, 1 << x) for x in feasible[u]]]
    for c in consumers[:-1]:
        grown = {(x, m | (1 << y)) for x, m in stages[-1] for y in feasible[c]}
        stages.append(sorted(grown))
    return stages


def _counts_by_position(stages: list[list[Code]], u: int, consumers: list[int]) -> np.ndarray:
    """Codes at positions u .. last reader - 1."""
    counts = np.empty(consumers[-1] - u)
    bounds = [u, *consumers]
    for s in range(len(stages)):
        counts[bounds[s] - u : bounds[s + 1] - u] = len(stages[s])
    return counts


@dataclass
class _Value:
    """One tracked value: its codes per stage, and what each reader does with them.

    start[d]         the code (index into stages[0]) once the producer has run on d
    pay[s][j, d]     what d receives when reader s runs there and the code is j
    move[s][j, d]    the code at stage s + 1 after that (not for the last reader)
    """

    edge: int
    readers: list[int]
    stages: list[list[Code]]
    start: np.ndarray
    pay: list[np.ndarray]
    move: list[np.ndarray]

    @staticmethod
    def of(p: Problem, k: int, stages: list[list[Code]]) -> _Value:
        u, readers, nbytes = p.edges[k]
        D = len(p.devices)
        weight = p.weight_of if p.objective in ("energy", "cost") else np.ones(D)
        runs = p.runs_of(u, readers)
        first = {x: j for j, (x, _) in enumerate(stages[0])}
        start = np.array([first.get(d, 0) for d in range(D)], dtype=np.int64)
        pay, move = [], []
        for s in range(len(readers)):
            codes = stages[s]
            pay.append(
                np.array(
                    [
                        [
                            0.0 if m >> d & 1 else p.transfer(x, d, nbytes) * runs * weight[d]
                            for d in range(D)
                        ]
                        for x, m in codes
                    ]
                )
            )
            if s + 1 < len(readers):
                index = {code: j for j, code in enumerate(stages[s + 1])}
                move.append(
                    np.array(
                        [[index.get((x, m | 1 << d), 0) for d in range(D)] for x, m in codes],
                        dtype=np.int64,
                    )
                )
        return _Value(k, readers, stages, start, pay, move)


def _build(p: Problem, values: list[_Value]) -> Contexts:
    """Per position, the contexts (mixed radix over the live tracked values' codes, in edge
    order) and how node i's device moves each of them on. A device a node cannot run on
    maps to code 0: that state costs inf anyway."""
    n, D = p.time.shape
    size, step, extra = [], [], []
    produced: dict[int, list[_Value]] = {}
    for v in values:
        produced.setdefault(p.edges[v.edge][0], []).append(v)
    live: list[_Value] = []  # live across the previous position, in edge order
    stage: dict[int, int] = {}  # readers done, per live value's edge
    prev = 1
    for i in range(n):
        rest = np.arange(prev)
        nxt: list[tuple[_Value, np.ndarray]] = []  # live at i, with [prev, D] codes at i
        recv = np.zeros((prev, D))
        for v in live:  # decode the previous context, one value at a time
            s = stage[v.edge]
            codes = rest % len(v.stages[s])
            rest = rest // len(v.stages[s])
            if v.readers[s] != i:
                nxt.append((v, np.repeat(codes[:, None], D, axis=1)))
                continue
            recv += v.pay[s][codes]
            stage[v.edge] = s + 1
            if s + 1 < len(v.readers):  # after its last reader it leaves the context
                nxt.append((v, v.move[s][codes]))
        for v in produced.get(i, []):
            stage[v.edge] = 0
            nxt.append((v, np.broadcast_to(v.start, (prev, D))))
        nxt.sort(key=lambda vc: vc[0].edge)
        code = np.zeros((prev, D), dtype=np.int64)
        scale = 1
        for v, codes in nxt:
            code += codes * scale
            scale *= len(v.stages[stage[v.edge]])
        size.append(scale)
        step.append(code)
        extra.append(recv)
        live, prev = [v for v, _ in nxt], scale
    return Contexts(size, step, extra, frozenset(v.edge for v in values))
