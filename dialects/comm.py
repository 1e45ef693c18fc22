"""The `comm` dialect: explicit point-to-point transfers between devices.

`comm.send`/`comm.recv` are the blocking forms inserted on every cross-device
edge; `comm.isend`/`comm.irecv` return a `!comm.token` that `comm.wait`
consumes, so the overlap pass can start a transfer early and wait late. A
channel id names one (sender, receiver, value) stream; both ends must agree on
it, on the peer and on the value type (checked by `gimlet.passes.comm_check`).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from xdsl.dialects.builtin import I64, IntegerAttr, StringAttr
from xdsl.ir import Attribute, Dialect, Operation, ParametrizedAttribute, SSAValue, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_result_def,
    prop_def,
    result_def,
    traits_def,
)
from xdsl.traits import EffectInstance, MemoryEffect, MemoryEffectKind
from xdsl.utils.exceptions import VerifyException

TRANSPORTS = ("nvlink", "pcie", "host_bounce", "network", "xgmi", "cxl", "local")


class _Communicates(MemoryEffect):
    """Transfers are side effects: never dead-code eliminated or merged by CSE."""

    @classmethod
    def get_effects(cls, op: Operation) -> AbstractSet[EffectInstance]:
        return {EffectInstance(MemoryEffectKind.WRITE)}


@irdl_attr_definition
class TokenType(ParametrizedAttribute, TypeAttribute):
    """Completion handle of an asynchronous transfer."""

    name = "comm.token"


def _check_transport(t: StringAttr) -> None:
    if t.data not in TRANSPORTS:
        raise VerifyException(
            f'unknown transport "{t.data}"; expected one of {", ".join(TRANSPORTS)}'
        )


class _Endpoint(IRDLOperation):
    peer = prop_def(StringAttr)
    channel = prop_def(IntegerAttr[I64])
    transport = prop_def(StringAttr)
    traits = traits_def(_Communicates())

    def verify_(self) -> None:
        _check_transport(self.transport)
        if self.channel.value.data < 0:
            raise VerifyException("channel ids are non-negative")


def _props(peer: str, channel: int, transport: str) -> dict[str, Attribute]:
    return {
        "peer": StringAttr(peer),
        "channel": IntegerAttr(channel, 64),
        "transport": StringAttr(transport),
    }


@irdl_op_definition
class SendOp(_Endpoint):
    """Send a value to `peer` on `channel`; buffered: completes without waiting for the receiver."""

    name = "comm.send"
    value = operand_def()
    assembly_format = (
        "$value `to` $peer `channel` $channel `via` $transport attr-dict `:` type($value)"
    )

    def __init__(self, value: SSAValue, peer: str, channel: int, transport: str):
        super().__init__(operands=[value], properties=_props(peer, channel, transport))


@irdl_op_definition
class RecvOp(_Endpoint):
    """Receive the value `peer` sends on `channel`."""

    name = "comm.recv"
    result = result_def()
    assembly_format = "`from` $peer `channel` $channel `via` $transport attr-dict `:` type($result)"

    def __init__(self, type: Attribute, peer: str, channel: int, transport: str):
        super().__init__(result_types=[type], properties=_props(peer, channel, transport))


@irdl_op_definition
class ISendOp(_Endpoint):
    """Start sending a value; `comm.wait` on the token before reusing it."""

    name = "comm.isend"
    value = operand_def()
    token = result_def(TokenType)
    assembly_format = (
        "$value `to` $peer `channel` $channel `via` $transport attr-dict `:` type($value)"
    )

    def __init__(self, value: SSAValue, peer: str, channel: int, transport: str):
        super().__init__(
            operands=[value],
            result_types=[TokenType()],
            properties=_props(peer, channel, transport),
        )


@irdl_op_definition
class IRecvOp(_Endpoint):
    """Post a receive; `comm.wait` on its token yields the value."""

    name = "comm.irecv"
    token = result_def(TokenType)
    assembly_format = "`from` $peer `channel` $channel `via` $transport attr-dict"

    def __init__(self, peer: str, channel: int, transport: str):
        super().__init__(result_types=[TokenType()], properties=_props(peer, channel, transport))


@irdl_op_definition
class WaitOp(IRDLOperation):
    """Block until the transfer behind `token` completes; a receive's wait yields its value."""

    name = "comm.wait"
    token = operand_def(TokenType)
    value = opt_result_def()
    traits = traits_def(_Communicates())
    assembly_format = "$token attr-dict (`:` type($value)^)?"

    def __init__(self, token: SSAValue, type: Attribute | None = None):
        super().__init__(operands=[token], result_types=[[type] if type is not None else []])


COMM = Dialect("comm", [SendOp, RecvOp, ISendOp, IRecvOp, WaitOp], [TokenType])
