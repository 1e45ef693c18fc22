"""The `dp` placement solver: dynamic programming over the program order.

Transformers are chains of blocks, so placement is a path through positions 0..n-1 with
a device per position. A device switch at position i pays for moving everything live
across i (every value produced before i and read at or after i) from the old device to
the new one: exact for chains, an estimate where a value skips ahead (`evaluate`, the
exact model, scores every answer, and a local search repairs what the estimate missed).

Two recurrences, one per kind of problem, then improvement and a local search:

- free (`free_dp`): state = device of node i, O(n * D^2). Optimal for chains under a sum
  objective (latency, energy, cost) when memory does not bind.
- labelled (`labelled_dp`): state = (device of node i, resource usage), a DP over resource
  states with dominance pruning. A label carries its exact usage of each tracked resource
  (weight bytes on a device whose memory binds; for throughput, each device's busy seconds)
  and its cost; labels whose usage falls in the same grid cell (cap / K per resource) are
  merged, keeping the cheapest (epsilon-dominance), and labels over a capacity are dropped,
  so every answer it returns fits. K is set from a work budget (K * n * D^2 cells), so small
  graphs get a fine grid (near exact) and 10k-node graphs still finish in seconds.
  Memory: cost = the objective, resources = bytes on each device that overflows in the free
  answer (more are added if the answer overflows another). Throughput: the objective is the
  busiest device, so the resources are every device's busy seconds but one (whose load is
  the label's cost), capped by an incumbent's bottleneck; the answer minimises
  max(cost, loads). Grids are refined around the best answer for a few rounds.
- both take a context into the state where the model has one (skips.py): the dearest
  values that skip ahead, tracked exactly, which the position model over-charges in an
  answer that leaves a device and comes back while they are live. Solved with contexts,
  the model gives one more starting answer.
- improvement (`_improve`): trust-region steps on the model linearised around an answer.
- a local search (`polish`) with the exact model: single-node moves, then moves of runs of
  same-device nodes, kept while they improve the objective and fit.

The MILP (solvers.milp) is the exact reference; benchmarks/placement_solvers.py reports
the gaps.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gimlet.errors import UserError
from gimlet.placement.skips import Contexts, no_contexts, track_skips
from gimlet.placement.solvers import INF, Problem, evaluate, fits, overflow_hint

# Cells (label slots x transitions) the labelled DP may touch per node and in all: the grid
# is as fine as this allows. 4e7 in all is ~2 s of numpy on the 2-core box.
_CELLS_TOTAL = 1e7
_CELLS_MAX_PER_NODE = 1 << 14
_MIN_CELLS = 4  # per resource: the grid is never coarser
_CONTEXTS = 32  # contexts per position at most (skips.py)
_ROUNDS = 12  # trust-region steps per starting answer, at most
_IMPROVE_UNTIL_S = 2.5  # CPU seconds into `dp`: no trust-region step may end later
_POLISH_UNTIL_S = 3.5  # and the local search stops here (it only ever improves)


# ------------------------------------------------------------------ model ---


@dataclass
class Model:
    """The position model: what each node and each device switch costs, and who pays.

    node[i, d, z]  seconds device z is busy because node i runs on d: its compute (z = d;
                   inf where d cannot run it), graph inputs it is the first reader of
                   (received on d), its graph outputs (received by the host), and, with a
                   guess, values that skip ahead (received by their readers' devices)
    sw[i, e, d]    switching from e (node i-1) to d (node i): what is live across i, received
                   by d
    ctx            values that skip ahead tracked exactly in the state (skips.py): the state
                   at i is (device, context) and ctx.extra[i][c, d] is received by d
    Seconds are in objective units (x the device's W or $/s for energy and cost), so a sum
    objective is node.sum(z) plus switches and throughput is the busiest z.
    """

    node: np.ndarray
    sw: np.ndarray
    ctx: Contexts

    @property
    def unit(self) -> np.ndarray:
        """[n, D] what a node on d costs in all (the sum objectives)."""
        return self.node.sum(axis=2)


def build_model(
    p: Problem, guess: Sequence[int] | None = None, ctx: Contexts | None = None
) -> Model:
    """The position model of p. Values in `ctx` are charged exactly through the state.
    Without a guess, any other value is charged at every device switch while it is live
    (exact for chains). With `guess` (an assignment), such a value read by a node other than
    the next one is charged by first-order terms around the guess (see `_linearise`), which
    are exact for the guess itself and for moving any one node."""
    n, D = p.time.shape
    if ctx is None:
        ctx = no_contexts(n, D)
    weight = p.weight_of.astype(float) if p.objective in ("energy", "cost") else np.ones(D)
    node = np.zeros((n, D, D))
    diag = np.arange(D)
    node[:, diag, diag] = p.time * weight[None, :]
    for consumers, nbytes in p.inputs:
        runs = p.runs_of(-1, consumers)
        for d in range(D):
            node[consumers[0], d, d] += p.transfer(p.host, d, nbytes) * runs * weight[d]
    for u, nbytes in p.outputs:
        runs = p.runs_of(u, [u])
        for d in range(D):
            node[u, d, p.host] += p.transfer(d, p.host, nbytes) * runs * weight[p.host]
    if guess is None:
        count, live = cut_bytes(p, ctx.tracked)
    else:
        count, live = np.zeros(n + 1), np.zeros(n + 1)
        for k, (u, consumers, nbytes) in enumerate(p.edges):
            if k in ctx.tracked:
                continue
            runs = p.runs_of(u, consumers)
            if consumers[0] == u + 1:  # the next node: a switch there moves it, exactly
                count[u + 1] += runs
                live[u + 1] += runs * nbytes
            skips = [c for c in consumers if c != u + 1]
            if skips:
                nxt = guess[u + 1] if consumers[0] == u + 1 else -1
                transfer = np.array(
                    [
                        [p.transfer(x, y, nbytes) * runs * weight[y] for y in range(D)]
                        for x in range(D)
                    ]
                )
                _linearise(node, transfer, guess, u, nxt, skips)
    sw = p.lat[None] * count[:n, None, None] + p.inv_bw[None] * live[:n, None, None]
    sw *= weight[None, None, :]
    sw[0] = 0.0
    return Model(node, sw, ctx)


def _linearise(
    node: np.ndarray,
    transfer: np.ndarray,
    guess: Sequence[int],
    u: int,
    nxt: int,
    skips: list[int],
) -> None:
    """First-order terms, around `guess`, of moving u's value to the readers that skip ahead.

    Exactly, that costs transfer[x, y] for each distinct device y of those readers other
    than u's own device x and the next node's (the switch there pays). Linearised: u on x
    pays for reaching the devices the guess gives the readers; reader c on y pays the change
    from its guessed device to y with the other readers where guessed. At the guess the
    terms add up to the exact cost, device by device, and a single node's move is exact.
    Each term is charged to the device that receives the value."""
    readers = [guess[c] for c in skips]
    where = set(readers) - {nxt}
    for x in range(node.shape[1]):  # the producer
        for y in where - {x}:
            node[u, x, y] += transfer[x, y]
    src = guess[u]
    for k, c in enumerate(skips):
        others = set(readers[:k] + readers[k + 1 :]) | {src, nxt}
        mine = readers[k]
        if mine not in others:  # the guess counted c's own device: take it back
            node[c, :, mine] -= transfer[src, mine]
        for y in range(node.shape[1]):
            if y not in others:
                node[c, y, y] += transfer[src, y]


def cut_bytes(p: Problem, skip: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Per position i, over the values produced before i and read at or after i (but the
    edges in `skip`): how many transfers a device switch at i costs and how many bytes, each
    weighted by how often that value moves per request."""
    n = len(p.nodes)
    count, nbytes_live = np.zeros(n + 1), np.zeros(n + 1)
    for k, (u, consumers, nbytes) in enumerate(p.edges):
        if k in skip:
            continue
        last = consumers[-1]
        runs = p.runs_of(u, consumers)
        count[u + 1] += runs
        count[last + 1] -= runs
        nbytes_live[u + 1] += runs * nbytes
        nbytes_live[last + 1] -= runs * nbytes
    return np.cumsum(count)[: n + 1], np.cumsum(nbytes_live)[: n + 1]


def model_loads(m: Model, assign: Sequence[int]) -> np.ndarray:
    """[D] busy seconds per device under the position model (what the recurrences see)."""
    a = np.asarray(assign)
    n, D = m.node.shape[:2]
    loads = m.node[np.arange(n), a].sum(axis=0)
    np.add.at(loads, a[1:], m.sw[np.arange(1, n), a[:-1], a[1:]])
    return loads + m.ctx.walk(a)


# ------------------------------------------------------------------- free ---


def free_dp(m: Model, extra: np.ndarray | None = None) -> list[int] | None:
    """Minimum of sum(node + extra) + switches over (device, context) states, node by node;
    None if nothing can run."""
    n, D = m.node.shape[:2]
    ctx = m.ctx
    unit = m.unit if extra is None else m.unit + extra
    devs = np.arange(D)
    best = _scatter_min(  # [D, size[0]]
        D, ctx.size[0], ctx.step[0], (ctx.extra[0] + unit[0])[0][None, :], devs[None, :]
    )[0]
    back: list[np.ndarray] = []
    for i in range(1, n):
        prev = ctx.size[i - 1]
        if prev == 1 and ctx.size[i] == 1:  # no context: the state is the device
            total = best[:, 0, None] + m.sw[i]  # [e, d]
            arg = np.argmin(total, axis=0)
            best = (total[arg, devs] + unit[i])[:, None]
            back.append(arg[:, None])
            continue
        total = best[:, :, None] + m.sw[i][:, None, :]  # [e, c, d]
        arg = np.argmin(total, axis=0)  # [c, d]
        val = total.min(axis=0) + ctx.extra[i] + unit[i][None, :]
        src = arg * prev + np.arange(prev)[:, None]  # the (e, c) each candidate extends
        best, win = _scatter_min(D, ctx.size[i], ctx.step[i], val, src)
        back.append(win)
    if not np.isfinite(best).any():
        return None
    end = int(np.argmin(best))
    d, c = divmod(end, ctx.size[-1])
    assign = [0] * n
    assign[-1] = d
    for i in range(n - 1, 0, -1):
        d, c = divmod(int(back[i - 1][d, c]), ctx.size[i - 1])
        assign[i - 1] = d
    return assign


def _scatter_min(
    D: int, size: int, step: np.ndarray, val: np.ndarray, src: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates val[c, d] (from src[c, d]) into states (d, step[c, d]): ([D, size] the
    cheapest, [D, size] which candidate it was)."""
    key = (np.arange(D)[None, :] * size + step).ravel()
    flat = val.ravel()
    best = np.full(D * size, INF)
    if size == 1 and step.shape[0] == 1:  # one candidate per state: no collisions
        best[key] = flat
        return best.reshape(D, size), src.reshape(D, size)
    np.minimum.at(best, key, flat)
    win = np.zeros(D * size, dtype=np.int64)
    hit = flat <= best[key]
    win[key[hit]] = src.ravel()[hit]
    return best.reshape(D, size), win.reshape(D, size)


# --------------------------------------------------------------- labelled ---


@dataclass
class Resource:
    """A tracked quantity: weight bytes (`mem`) or busy seconds (`load`) of one device."""

    device: int
    kind: str  # "mem" or "load"
    cap: float
    cells: int = 1


def labelled_dp(
    p: Problem, m: Model, resources: list[Resource], cost_device: int = -1, cost_cap: float = INF
) -> list[int] | None:
    """DP over (device, context, resource cell) with exact usage per label; None if nothing
    fits.

    Sum objectives: cost = the objective; every resource is memory. Throughput
    (cost_device >= 0): cost = busy seconds of cost_device (at most cost_cap), resources
    include other devices' busy seconds, and the answer minimises max(cost, loads)."""
    n, D = m.node.shape[:2]
    ctx = m.ctx
    R = len(resources)
    throughput = cost_device >= 0
    _size_grid(resources, n, (D * D if throughput else D) * ctx.widest)
    sizes = np.array([r.cells for r in resources], dtype=np.int64)
    strides = np.concatenate([[1], np.cumprod(sizes)[:-1]]).astype(np.int64)
    K = int(np.prod(sizes))
    cap = np.array([r.cap for r in resources])
    cell = cap / sizes  # usage u falls in cell floor(u / cell)
    # which device's load / memory each resource is
    load_of = np.zeros((D, R))
    mem_of = np.zeros((D, R))
    for k, r in enumerate(resources):
        (mem_of if r.kind == "mem" else load_of)[r.device, k] = 1.0
    cost_of = np.zeros(D)
    if throughput:
        cost_of[cost_device] = 1.0
    else:
        cost_of[:] = 1.0

    # A label is (d, c, k): device of node i, context c, cell k; flat d * (C * K) + c * K + k.
    # Before node 0 there is one label: no device, context 0, usage 0, cost 0.
    cost = np.zeros((1, 1, 1))  # [e, c, k]
    usage = np.zeros((1, 1, 1, R))
    back: list[np.ndarray] = []
    whole = ctx.widest == 1  # no contexts: every node's adds at once
    if whole:
        adds = _step_adds(p, m, np.arange(n), load_of, mem_of, cost_of)
    for i in range(n):
        E, prev, Kp = cost.shape  # the labels at i - 1: one before node 0
        size = ctx.size[i]
        step = adds if whole else _step_adds(p, m, np.array([i]), load_of, mem_of, cost_of)
        row = i if whole else 0
        cost_add, res_add = step[0][row, :E], step[1][row, :E]  # [e, d, c](, R)
        total = cost[:, None] + cost_add[..., None]  # [e, d, c, k]
        block = prev * Kp  # labels per device at i - 1
        if throughput:  # loads depend on the previous device (switch costs)
            flat_c = total.ravel()
            flat_u = (usage[:, None] + res_add[:, :, :, None, :]).reshape(-1, R)
        else:  # memory does not: pick the best previous device per (c, k) first
            e_best = np.argmin(total, axis=0).reshape(D, block)  # [d, (c, k)]
            flat_c = total.min(axis=0).ravel()
            flat_u = usage.reshape(E, block, R)[e_best, np.arange(block)]
            flat_u = (flat_u.reshape(D, prev, Kp, R) + res_add[0][:, :, None, :]).reshape(-1, R)
        valid = (flat_c <= cost_cap) & (flat_u <= cap).all(axis=1)
        idx = np.flatnonzero(valid)
        if idx.size == 0:
            return None
        c = flat_c[idx]
        u = flat_u[idx]
        d_idx = idx // block % D
        state = d_idx  # (d, context at i), flat; with one context, the device
        if size > 1:
            state = d_idx * size + ctx.step[i][idx // Kp % prev, d_idx]
        coords = np.clip((u / cell).astype(np.int64), 0, sizes - 1)
        key = state * K + coords @ strides
        best = np.full(D * size * K, INF)
        np.minimum.at(best, key, c)
        win = c <= best[key]
        chosen = np.full(D * size * K, -1, dtype=np.int64)
        chosen[key[win]] = idx[win]  # ties: any one of the cheapest
        filled = np.flatnonzero(chosen >= 0)
        pick = chosen[filled]
        cost = best.reshape(D, size, K)
        new_usage = np.zeros((D * size * K, R))
        new_usage[filled] = flat_u[pick]
        usage = new_usage.reshape(D, size, K, R)
        # the label each one extends, as e * block + c * Kp + k at i - 1
        e_src = pick // (D * block) if throughput else e_best.ravel()[pick]
        step_back = np.zeros(D * size * K, dtype=np.int32)
        step_back[filled] = e_src * block + pick % block
        back.append(step_back)
    final = np.maximum(cost, (usage * load_of.sum(axis=0)).max(axis=3)) if throughput else cost
    end = int(np.argmin(final))
    if not math.isfinite(final.ravel()[end]):
        return None
    assign = [0] * n
    for i in range(n - 1, -1, -1):
        assign[i] = end // (ctx.size[i] * K)
        end = int(back[i][end])
    return assign


def _cells_per_node(n: int) -> float:
    return min(_CELLS_MAX_PER_NODE, _CELLS_TOTAL / max(n, 1))


def _size_grid(resources: list[Resource], n: int, transitions: int) -> None:
    """Cells per resource from the work budget: as many as n nodes x transitions allow."""
    per_node = _cells_per_node(n) / transitions
    per_resource = max(_MIN_CELLS, int(per_node ** (1 / max(len(resources), 1))))
    for r in resources:
        r.cells = per_resource


@functools.cache
def _eye(D: int) -> np.ndarray:
    return np.eye(D)


def _step_adds(
    p: Problem,
    m: Model,
    at: np.ndarray,
    load_of: np.ndarray,
    mem_of: np.ndarray,
    cost_of: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """([k, e, d, c] cost added, [k, e, d, c, R] resources added) by node at[k] on d after e,
    from context c (the positions in `at` have as many contexts before them)."""
    D = m.node.shape[1]
    extra = np.stack([m.ctx.extra[i] for i in at]).transpose(0, 2, 1)  # [k, d, c]
    recv = m.sw[at][:, :, :, None] + extra[:, None]  # [k, e, d, c] received by d
    busy = m.node[at][:, None, :, None, :] + recv[..., None] * _eye(D)[:, None, :]  # [k,e,d,c,z]
    runs = np.isfinite(p.time[at])[:, None, :, None]  # [k, 1, d, 1]
    busy = np.where(runs[..., None], busy, 0.0)
    cost = np.where(runs, busy @ cost_of, INF)
    res = busy @ load_of + (p.weights[at, None, None] * mem_of)[:, None, :, None, :]
    res = np.where(runs[..., None], res, INF)
    return cost, res


# ------------------------------------------------------------------ polish ---


def polish(p: Problem, assign: list[int], seconds: float) -> list[int]:
    """Local search with the exact model: move one node, or a run of nodes that share a
    device, to another device while that lowers the objective and everything fits; for at
    most `seconds` of CPU."""
    deadline = time.process_time() + seconds
    n, D = p.time.shape
    best = list(assign)
    best_obj = evaluate(p, best).objective
    improved = True
    while improved and time.process_time() < deadline:
        improved = False
        for lo, hi in _runs(best) + [(i, i + 1) for i in range(n)]:
            if time.process_time() > deadline:
                break
            here = best[lo]
            for d in range(D):
                if d == here or not np.isfinite(p.time[lo:hi, d]).all():
                    continue
                trial = best[:lo] + [d] * (hi - lo) + best[hi:]
                if not fits(p, trial):
                    continue
                obj = evaluate(p, trial).objective
                if obj < best_obj * (1 - 1e-12):
                    best, best_obj, improved = trial, obj, True
                    break
    return best


def _runs(assign: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal [lo, hi) stretches on one device."""
    runs, lo = [], 0
    for i in range(1, len(assign) + 1):
        if i == len(assign) or assign[i] != assign[lo]:
            runs.append((lo, i))
            lo = i
    return runs


# ------------------------------------------------------------------- entry ---


def dp(p: Problem) -> list[int]:
    """The DP solver: solve the position model, and again with the dearest values that skip
    ahead tracked exactly; improve those answers, greedy's and each one-device answer by
    re-solving the model linearised around it (a trust region keeps steps where the
    linearisation holds); polish the best with single-node and run moves.
    The improvement and polish phases stop at fixed CPU-time marks, so a 10k-node graph
    stays within seconds whatever the objective."""
    if not p.nodes:
        return []
    from gimlet.placement.solvers import greedy

    t0 = time.process_time()
    m = build_model(p)
    free = None if p.objective == "throughput" else free_dp(m)
    starts = [_solve_model(p, m, free)]
    if free is None or fits(p, free):  # where memory binds, contexts would coarsen the grid
        tracked = _tracked_answer(p)
        if tracked is not None and tracked != starts[0]:
            starts.append(tracked)
    with contextlib.suppress(UserError):  # greedy can paint itself into a corner (memory)
        starts.append(greedy(p))
    n, D = p.time.shape
    for d in range(D):  # everything on d, where d can run it
        on_d = [d if np.isfinite(p.time[i, d]) else int(np.argmin(p.time[i])) for i in range(n)]
        if fits(p, on_d):
            starts.append(on_d)
    results = []
    for k, start in enumerate(starts):
        left = _IMPROVE_UNTIL_S - (time.process_time() - t0)
        results.append(_improve(p, start, left / (len(starts) - k)))
    best = min(results, key=lambda a: evaluate(p, a).objective)
    return polish(p, best, _POLISH_UNTIL_S - (time.process_time() - t0))


def _improve(p: Problem, best: list[int], seconds: float) -> list[int]:
    """Trust-region steps: re-solve the model linearised around the answer, with a price
    rho on moving a node away from it; a step that does not improve raises rho. No step
    starts that the last one's time says would end after `seconds` of CPU."""
    t0 = time.process_time()
    best_obj = evaluate(p, best).objective
    rho = 0.0
    step = best_obj / len(p.nodes)
    D = len(p.devices)
    last = 0.0
    for _ in range(_ROUNDS):
        began = time.process_time()
        if began - t0 + last > seconds:
            break
        m = build_model(p, best)
        if rho:
            away = np.ones((len(best), D))
            away[np.arange(len(best)), best] = 0.0
            m.node[:, np.arange(D), np.arange(D)] += rho * away
        assign = _solve_model(p, m)
        last = time.process_time() - began
        if assign == best:
            break
        obj = evaluate(p, assign).objective
        if obj < best_obj * (1 - 1e-9) and fits(p, assign):
            best, best_obj, rho = assign, obj, rho / 4
        else:
            rho = max(rho * 4, step * 1e-3)
    return best


def _context_limit(p: Problem) -> int:
    """Contexts per position the first solve may track: at most _CONTEXTS, and for
    throughput (the labelled recurrence) never so many that they, not the work budget, set
    the grid (the loads of all devices but one) to its floor."""
    n, D = p.time.shape
    if p.objective != "throughput":
        return _CONTEXTS  # the free recurrence: a context costs D^2 steps per node, no grid
    room = _cells_per_node(n) / (D * D * _MIN_CELLS ** (D - 1))
    return int(min(_CONTEXTS, room))


def _tracked_answer(p: Problem) -> list[int] | None:
    """The model's answer with the dearest values that skip ahead tracked exactly (skips.py),
    or None where that buys nothing: no value tracked, or (sum objectives) memory binds:
    there resolution in bytes decides what packs, and contexts would coarsen the labelled
    recurrence's grid."""
    ctx = track_skips(p, _context_limit(p))
    if not ctx.tracked:
        return None
    m = build_model(p, ctx=ctx)
    if p.objective == "throughput":
        return _throughput(p, m)
    assign = free_dp(m)
    return assign if assign is not None and fits(p, assign) else None


def _solve_model(p: Problem, m: Model, free: list[int] | None = None) -> list[int]:
    """The model's answer; `free`, if given, is free_dp(m) already."""
    if p.objective == "throughput":
        return _throughput(p, m)
    assign = free or free_dp(m)
    if assign is None:
        raise UserError("no placement fits: " + overflow_hint(p))
    return assign if fits(p, assign) else _memory(p, m, assign)


def _overflowing(p: Problem, assign: Sequence[int]) -> list[int]:
    used = np.zeros(len(p.devices))
    np.add.at(used, np.asarray(assign), p.weights)
    return [int(d) for d in np.flatnonzero(used > p.capacity)]


def _memory(p: Problem, m: Model, free: list[int]) -> list[int]:
    """Track the bytes of every device that overflows until an answer fits."""
    tracked = _overflowing(p, free)
    while True:
        res = [Resource(d, "mem", float(p.capacity[d])) for d in tracked]
        assign = labelled_dp(p, m, res)
        if assign is None:
            raise UserError("no placement fits: " + overflow_hint(p))
        more = [d for d in _overflowing(p, assign) if d not in tracked]
        if not more:
            return assign
        tracked += more


def _throughput(p: Problem, m: Model) -> list[int]:
    """Bottleneck: labels on every device's load but the busiest one's (the label's cost)."""
    D = len(p.devices)
    start = free_dp(m)
    if start is None:
        raise UserError("no placement fits: " + overflow_hint(p))
    mem = _overflowing(p, start)
    if mem:
        start = _memory(p, m, start)
    best = start
    best_model = float(model_loads(m, best).max())
    for _ in range(3):
        loads = model_loads(m, best)
        cost_device = int(np.argmax(loads))
        cap = float(loads.max()) * (1 + 1e-9)
        res = [Resource(d, "load", cap) for d in range(D) if d != cost_device]
        res += [Resource(d, "mem", float(p.capacity[d])) for d in mem]
        found = labelled_dp(p, m, res, cost_device, cap)
        if found is None:
            break
        found_model = float(model_loads(m, found).max())
        if found_model >= best_model * (1 - 1e-6):
            break
        best, best_model = found, found_model
    return best
