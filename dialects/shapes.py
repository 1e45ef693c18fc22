"""Shape and dtype rules shared by the gml verifiers and the shape-inference pass.

Shapes are tuples of ints where DYN (xDSL's DYNAMIC_INDEX) is a dimension
whose size is only known at run time (a symbolic batch or sequence length).
"""

from __future__ import annotations

from collections.abc import Sequence

from xdsl.dialects.builtin import DYNAMIC_INDEX, TensorType
from xdsl.ir import Attribute
from xdsl.utils.exceptions import VerifyException

DYN = DYNAMIC_INDEX
Shape = tuple[int, ...]


def shape_of(t: Attribute) -> Shape:
    assert isinstance(t, TensorType)
    return tuple(t.get_shape())


def tensor(shape: Sequence[int], element_type: Attribute) -> TensorType:
    return TensorType(element_type, list(shape))


def dims_compatible(a: int, b: int) -> bool:
    return a == b or a == DYN or b == DYN


def shapes_compatible(a: Shape, b: Shape) -> bool:
    return len(a) == len(b) and all(dims_compatible(x, y) for x, y in zip(a, b, strict=True))


def broadcast(a: Shape, b: Shape) -> Shape:
    """numpy/torch broadcasting; a dynamic dim against 1 stays dynamic."""
    out: list[int] = []
    for i in range(max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif x == DYN or y == DYN:
            out.append(x if y == DYN else y)
        else:
            raise VerifyException(f"shapes {fmt(a)} and {fmt(b)} do not broadcast")
    return tuple(reversed(out))


def normalize_dim(dim: int, rank: int) -> int:
    if not -rank <= dim < max(rank, 1):
        raise VerifyException(f"dimension {dim} out of range for rank {rank}")
    return dim % rank if rank else 0


def fmt(shape: Shape) -> str:
    return "x".join("?" if d == DYN else str(d) for d in shape) or "scalar"


def check_result(declared: Attribute, inferred: TensorType, what: str = "result") -> None:
    """The declared type may be more dynamic than the inferred one, never different."""
    assert isinstance(declared, TensorType)
    if declared.element_type != inferred.element_type:
        raise VerifyException(
            f"{what} element type {declared.element_type} does not match "
            f"expected {inferred.element_type}"
        )
    if not shapes_compatible(shape_of(declared), shape_of(inferred)):
        raise VerifyException(
            f"{what} shape {fmt(shape_of(declared))} does not match "
            f"expected {fmt(shape_of(inferred))}"
        )
