"""fuse-elementwise: group producer->consumer chains of elementwise ops into gml.fusion.

A group is emitted where its last member stood, so it is only extended by an
op X when no value of the group is used outside it before X (the group is
"closed" by the first outside reader); that keeps every use dominated and the
block acyclic without a separate reachability analysis, in one linear scan.

Every member's result must broadcast with the group's domain (the broadcast of all
its members' shapes): a backend emits the group as one loop over that domain, so
q [2,4,10,8] and k [2,2,10,8] of grouped-query attention never share a group.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.utils.exceptions import VerifyException

from gimlet.dialects import gml
from gimlet.dialects.shapes import Shape, broadcast, shape_of


def is_elementwise(op: Operation) -> bool:
    return isinstance(op, gml.ELEMENTWISE)


def _widen(domain: Shape, op: Operation) -> Shape | None:
    """The domain with `op` in the group, or None where its result does not broadcast."""
    try:
        return broadcast(domain, shape_of(op.results[0].type))
    except VerifyException:
        return None


def _groups(block: Block) -> list[list[Operation]]:
    """Scan once; a group closes as soon as an op outside it reads one of its values,
    because no later op may join it then. Linear in the number of uses."""
    group_of: dict[Operation, int] = {}
    groups: list[list[Operation]] = []
    closed: list[bool] = []
    last: list[int] = []  # scan position of each group's latest member
    domain: list[Shape] = []  # broadcast of each group's member shapes
    for position, op in enumerate(block.ops):
        read = {
            group_of[v.owner]
            for inner in op.walk()
            for v in inner.operands
            if isinstance(v.owner, Operation) and v.owner in group_of
        }
        target = None
        if is_elementwise(op):
            open_groups = [g for g in read if not closed[g] and _widen(domain[g], op) is not None]
            # The group whose last member is latest is the one a chain is extending.
            target = max(open_groups, key=lambda g: last[g], default=None)
            if target is None:
                target = len(groups)
                groups.append([])
                closed.append(False)
                last.append(position)
                domain.append(())
            widened = _widen(domain[target], op)
            assert widened is not None
            domain[target] = widened
            groups[target].append(op)
            last[target] = position
            group_of[op] = target
        for g in read:
            if g != target:
                closed[g] = True
    return [g for g in groups if len(g) > 1]


def _outline(group: list[Operation]) -> None:
    """Move `group` into a gml.fusion standing where its last member stood."""
    members = set(group)
    block, after = group[-1].parent_block(), group[-1].next_op
    assert block is not None and after is not None  # a terminator always follows
    escaping: list[SSAValue] = [
        res
        for op in group
        for res in op.results
        if any(use.operation not in members for use in res.uses)
    ]
    for op in group:
        op.detach()
    fusion = gml.FusionOp(group, escaping)
    fusion.location = group[-1].location
    block.insert_op_before(fusion, after)
    for old, new in zip(escaping, fusion.outputs, strict=True):
        old.replace_uses_with_if(new, lambda use: use.operation.parent_op() is not fusion)


@dataclass(frozen=True)
class FuseElementwise(ModulePass):
    """Group chains of elementwise ops into gml.fusion regions (one kernel each)."""

    name = "fuse-elementwise"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for inner in list(op.walk()):
            for region in inner.regions:
                for block in region.blocks:
                    if not isinstance(inner, gml.FusionOp):
                        for group in _groups(block):
                            _outline(group)
