"""fuse-elementwise: group producer->consumer chains of elementwise ops into gml.fusion.

A group is emitted where its last member stood, so it is only extended by an
op X when no value of the group is used outside it before X; that keeps every
use dominated and the block acyclic without a separate reachability analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass

from gimlet.dialects import gml


def is_elementwise(op: Operation) -> bool:
    return isinstance(op, gml.ELEMENTWISE)


def _groups(block: Block) -> list[list[Operation]]:
    position = {op: i for i, op in enumerate(block.ops)}
    group_of: dict[Operation, list[Operation]] = {}
    groups: list[list[Operation]] = []
    for op in block.ops:
        if not is_elementwise(op):
            continue
        producers = [v.owner for v in op.operands if isinstance(v.owner, Operation)]
        candidates = [group_of[p] for p in producers if p in group_of]
        target = None
        # Prefer the group whose last member is latest: it is the cheapest to extend.
        for g in sorted(candidates, key=lambda g: -position[g[-1]]):
            members = set(g) | {op}
            if all(
                use.operation in members or position.get(use.operation, -1) > position[op]
                for member in g
                for res in member.results
                for use in res.uses
            ):
                target = g
                break
        if target is None:
            target = []
            groups.append(target)
        target.append(op)
        group_of[op] = target
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
