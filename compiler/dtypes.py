"""One table relating torch dtypes, IR element types and numpy dtypes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
)
from xdsl.ir import Attribute

from gimlet.errors import UserError

_TABLE: list[tuple[torch.dtype, Attribute, np.dtype]] = [
    (torch.float32, Float32Type(), np.dtype(np.float32)),
    (torch.float64, Float64Type(), np.dtype(np.float64)),
    (torch.float16, Float16Type(), np.dtype(np.float16)),
    (torch.bfloat16, BFloat16Type(), np.dtype(ml_dtypes.bfloat16)),
    (torch.int64, IntegerType(64), np.dtype(np.int64)),
    (torch.int32, IntegerType(32), np.dtype(np.int32)),
    (torch.int16, IntegerType(16), np.dtype(np.int16)),
    (torch.int8, IntegerType(8), np.dtype(np.int8)),
    (torch.uint8, IntegerType(8, Signedness.UNSIGNED), np.dtype(np.uint8)),
    (torch.bool, IntegerType(1), np.dtype(np.bool_)),
]
_BY_TORCH = {t: (e, n) for t, e, n in _TABLE}
_BY_ELT = {e: (t, n) for t, e, n in _TABLE}
_BY_NUMPY = {n: (t, e) for t, e, n in _TABLE}


def element_type_for_torch(dtype: torch.dtype) -> Attribute:
    if dtype not in _BY_TORCH:
        raise UserError(f"unsupported dtype {dtype}")
    return _BY_TORCH[dtype][0]


def numpy_dtype(element_type: Attribute) -> np.dtype:
    if element_type not in _BY_ELT:
        raise UserError(f"unsupported element type {element_type}")
    return _BY_ELT[element_type][1]


def torch_dtype(element_type: Attribute) -> torch.dtype:
    return _BY_ELT[element_type][0]


def element_type_for_numpy(dtype: np.dtype) -> Attribute:
    if np.dtype(dtype) not in _BY_NUMPY:
        raise UserError(f"unsupported numpy dtype {dtype}")
    return _BY_NUMPY[np.dtype(dtype)][1]


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """bf16 has no numpy dtype: go through its bits and view as ml_dtypes.bfloat16."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def numpy_to_torch(a: np.ndarray) -> torch.Tensor:
    a = np.require(a, requirements="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
