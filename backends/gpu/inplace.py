"""Which slots of a bucket's parameter table hold an address inside an input or output.

A segment's code reads every tensor at `A + P[slot]`: the arena's base plus an offset
from the table. The runtime can therefore read an input where the caller keeps it (a KV
cache of 19 MB, the same tensor every decode step) and write an output straight into
the caller's tensor, instead of copying them into and out of the arena, by adding
`caller's address - (arena + offset)` to the slots that address that tensor and
capturing a graph with that table (backends/nvidia/runtime/gml_cuda.cpp).

Those slots are found by evaluating the table a second time with the tensor moved by
`SHIFT` bytes in the plan (it and every view of it): the slots that move by exactly
`SHIFT` address it. A tensor is bound only where that is all that changes: no slot moves
by another amount (an offset used in arithmetic), no other input or output moves with
it (an output that is a view of an input), and an output is its own storage (not a view
into a larger buffer the caller does not have). `SHIFT` keeps every alignment up to
2^40, so a slot that tests an address's alignment reads the same; the runtime binds only
addresses with the arena's alignment (shapes.ALIGN) to the planned one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from xdsl.ir import SSAValue

SHIFT = 1 << 40


def bound_slots(
    slots: Sequence[Callable[[Any], int]],
    params: Sequence[int],
    env: Any,
    group: set[Any],
    others: Sequence[Any],
) -> list[int] | None:
    """Slots addressing the tensors in `group` (a root and its views, keys of
    env.offsets), or None when moving them changes anything else: a slot by another
    amount, or the offset of one of `others` (the function's other inputs and outputs)."""
    saved = dict(env.offsets)
    try:
        for key in group:
            env.offsets[key] += SHIFT
        moved = [slot(env) - p for slot, p in zip(slots, params, strict=True)]
        if any(env.offsets[o] != saved[o] for o in others):
            return None
    finally:
        env.offsets.clear()
        env.offsets.update(saved)
    if any(d not in (0, SHIFT) for d in moved):
        return None
    return [i for i, d in enumerate(moved) if d == SHIFT]


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

    def root(v: SSAValue) -> SSAValue:
        return alias.get(v, (v, 0))[0]

    def group(r: SSAValue) -> set[Any]:
        return {r} | {v for v, (w, _) in alias.items() if w == r}

    ends = [*inputs, *outputs]
    out: list[list[int] | None] = []
    for i, v in enumerate(ends):
        # an output returned twice, or an input returned, moves with it: not bound
        others = [e for j, e in enumerate(ends) if j != i]
        if i >= len(inputs):  # an output: its own storage, not part of a larger buffer
            own, whole = output_bytes(v)
            if alias.get(v, (v, 0))[1] != 0 or own != whole:
                out.append(None)
                continue
        out.append(bound_slots(slots, params, env, group(root(v)), others))
    return out
