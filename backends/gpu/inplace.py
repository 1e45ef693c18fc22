"""Which slots of a bucket's parameter table hold an address inside an input or output.

A segment's code reads every tensor at `A + P[slot]`: the arena's base plus an offset
from the table. The runtime can therefore read an input where the caller keeps it (a KV
cache of 19 MB, the same tensor every decode step) and write an output straight into
the caller's tensor, instead of copying them into and out of the arena, by adding
`caller's address - (arena + offset)` to the slots that address that tensor and
capturing a graph with that table (backends/nvidia/runtime/gml_cuda.cpp).

Those slots are found by evaluating the table once more with every input and output
moved in the plan (it and every view of it), end i by `SHIFT << 8i` bytes: the slots that
move by exactly end i's shift address it. A tensor is bound only where that is all that
changes: no slot moves by another amount (an offset used in arithmetic: then nothing is
bound), no other input or output moves with it (an output that is a view of an input, a
value returned twice), and an output is its own storage (not a view into a larger buffer
the caller does not have). The shifts keep every alignment up to 2^40, so a slot that
tests an address's alignment reads the same; the runtime binds only addresses with the
arena's alignment (shapes.ALIGN) to the planned one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from xdsl.ir import SSAValue

SHIFT = 1 << 40  # end i moves by SHIFT << 8i: one evaluation of the table tells them apart


def binding(
    slots: Sequence[Callable[[Any], int]],
    params: Sequence[int],
    env: Any,
    alias: dict[SSAValue, tuple[SSAValue, int]],
    inputs: Sequence[SSAValue],
    outputs: Sequence[SSAValue],
    output_bytes: Callable[[SSAValue], tuple[int, int]],
) -> list[list[int] | None]:
    """Per input, then per output: the slots to move to bind it in place, or None.
    `output_bytes(v)` gives (bytes the caller's tensor holds, bytes of v's root)."""
    ends = [*inputs, *outputs]
    shift = [SHIFT << (8 * i) for i in range(len(ends))]
    ok = [True] * len(ends)
    for i, v in enumerate(outputs, len(inputs)):  # its own storage, not part of a larger one
        own, whole = output_bytes(v)
        ok[i] = alias.get(v, (v, 0))[1] == 0 and own == whole
    saved = dict(env.offsets)
    try:
        for i, v in enumerate(ends):  # the end's root and every view of it
            root = alias.get(v, (v, 0))[0]
            for key in saved:
                if key == root or (key in alias and alias[key][0] == root):
                    env.offsets[key] += shift[i]
        ends_moved = [env.offsets[v] - saved[v] for v in ends]
        env.memo.clear()  # what the slots gave at the planned offsets
        moved = [slot(env) - p for slot, p in zip(slots, params, strict=True)]
    finally:
        env.offsets.clear()
        env.offsets.update(saved)
        env.memo.clear()
    # an end that moves with another (an input returned, or as a view; a value returned
    # twice) is bound by neither
    for i, d in enumerate(ends_moved):
        if d != shift[i]:
            for j in _ends_in(d, len(ends)) or range(len(ends)):
                ok[j] = False
    bound: list[list[int]] = [[] for _ in ends]
    for s, d in enumerate(moved):
        if d == 0:
            continue
        if d in shift:
            bound[shift.index(d)].append(s)
            continue
        together = _ends_in(d, len(ends))
        if together is None:  # an offset used in arithmetic: what it means is unknown
            return [None] * len(ends)
        for j in together:  # ends sharing storage (seen above as well)
            ok[j] = False
    return [b if good else None for b, good in zip(bound, ok, strict=True)]


def _ends_in(d: int, n: int) -> list[int] | None:
    """The ends whose shifts sum to `d` (each at most once), or None if it is no such sum."""
    if d < 0 or d % SHIFT:
        return None
    q, found = d // SHIFT, []
    for i in range(n):
        if q & 255 not in (0, 1):
            return None
        if q & 255:
            found.append(i)
        q >>= 8
    return found if q == 0 else None
