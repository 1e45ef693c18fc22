"""The roofline cost model every placement solver shares.

An op costs `flops` arithmetic and moves `bytes` through device memory; on a device it takes
max(flops / peak FLOP/s, bytes / bandwidth) plus one kernel launch. That is the whole model:
it ignores caches, tile quantization and overlap between kernels, because placement needs
relative times that are right to a small factor, cheap to compute for every op on every
device, and explainable. benchmarks/calibrate_h100.py checks it against a real H100
(benchmarks/results/h100_calibration.md) and the named efficiency constants below come from
that run: kernels reach only part of the datasheet rates, and each one costs a few
microseconds however small it is.

Shapes may hold `?` dims; every function takes `dim_hint`, the size assumed for each of them
(say the expected batch or sequence length).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IndexType,
    IntegerType,
    Signedness,
    TensorType,
)
from xdsl.ir import Attribute, Operation, SSAValue

from gimlet.dialects import gml
from gimlet.dialects.shapes import DYN
from gimlet.placement.cluster import Device

# FLOPs per element, where an op is more than one add or multiply per element. Transcendentals
# are polynomial or range-reduction sequences of roughly 8-10 instructions on GPUs and CPUs
# alike; the figures only matter once an op is compute bound, which elementwise ops rarely are.
_PER_ELEMENT: dict[type[Operation], float] = {
    gml.ExpOp: 8,
    gml.LogOp: 8,
    gml.TanhOp: 8,
    gml.SigmoidOp: 9,  # exp + add + reciprocal
    gml.SiluOp: 10,  # x * sigmoid(x)
    gml.ErfOp: 10,
    gml.GeluOp: 10,  # erf (or tanh) + a few multiplies
    gml.SinOp: 8,
    gml.CosOp: 8,
    gml.PowOp: 8,  # exp(y * log(x))
    gml.SqrtOp: 4,
    gml.RsqrtOp: 4,
    gml.ReciprocalOp: 4,
    gml.DivOp: 4,
    gml.SoftmaxOp: 5,  # max, subtract, exp (counted cheap: it is fused), sum, divide
    gml.LogSoftmaxOp: 5,
    gml.LayerNormOp: 8,  # mean, centre, square, variance, rsqrt-scale, weight, bias
    gml.BatchNormOp: 4,  # (x - mean) * rsqrt(var + eps) * w + b, statistics precomputed
}

# Ops that are views of their operand (no kernel, no traffic) and ops that only name data.
_FREE: tuple[type[Operation], ...] = (
    gml.ReshapeOp,
    gml.ParamOp,
    gml.ConstantOp,
    gml.DimOp,
    gml.YieldOp,
)

# Pure data movement: no arithmetic, every operand read and the result written once.
_COPIES: tuple[type[Operation], ...] = (gml.PermuteOp, gml.ExpandOp, gml.ConcatOp, gml.CastOp)

# Data known when the program loads, and the layout changes that keep it so (a transposed
# weight): see is_load_time.
_WEIGHTS: tuple[type[Operation], ...] = (gml.ParamOp, gml.ConstantOp)
_LAYOUT: tuple[type[Operation], ...] = (
    gml.PermuteOp,
    gml.ReshapeOp,
    gml.ExpandOp,
    gml.CastOp,
    gml.SliceOp,
)


# ---- calibration (benchmarks/results/h100_calibration.md; tests/data/h100_measurements.json) --
# Derived by `derive_calibration` in benchmarks/calibrate_h100.py from the calibration cases
# (not the held-out ones); tests/test_cost.py checks these still match that derivation.
#
# Achieved/datasheet rate is a property of the libraries as much as of the chip, so the
# efficiencies apply to every device: derating all of them alike keeps a comparison between two
# devices from flipping merely because one was measured and the other was not.

MEMORY_EFFICIENCY = 0.90
"""Streaming elementwise ops (add/mul/gelu/cast, >= 256 MB) reached 3.0 of 3.35 TB/s."""

MATMUL_EFFICIENCY = 0.74
"""Compute-bound GEMMs (>= 100 GFLOP; cuBLAS; bf16, f16, f32) reached a median 74% of peak."""

ATTENTION_EFFICIENCY = 0.57
"""Flash attention (B4 H32 L4096 E128 causal bf16, the one compute-bound case) reached 57%."""

COMPUTE_EFFICIENCY: dict[str, float] = {
    "matmul": MATMUL_EFFICIENCY,
    "attention": ATTENTION_EFFICIENCY,
}
"""By OpCost.kind; other kinds (conv: cuDNN's TF32 beats the f32 peak, NCHW f16 reaches 14%,
so no one factor fits; elementwise: memory bound anyway) keep the datasheet peak."""

MEASURED_LAUNCH_OVERHEAD: dict[str, float] = {
    "NVIDIA H100 SXM5 80GB": 3.4e-6,
    "NVIDIA H200 SXM 141GB": 5.1e-6,
}
"""Seconds per kernel by Device.model, replacing its preset `launch_overhead`. H100: the
median, over ops under 20 us, of measured time minus the calibrated roofline, in CUDA-graph
replay (eager torch adds host dispatch on top: 10-35 us per small op on the same machine).
H200: from gimlet's own GPU backend, a GPT placed on gpu0 alone: measured time minus the
summed calibrated roofline, per op that costs anything per call; the median of three runs'
fits (benchmarks/results/gpu_placements.md, runs 1-3: 0.910, 1.068 and 1.128 ms). Those
runs fitted 3.27, 4.03 and 4.32 us over 207 ops and a 0.234 ms roofline, counting the 33
transposes of weights the backend computes at load; over the 174 ops left once they are
free (is_load_time), roofline 0.180 ms, the same times fit 4.20, 5.11 and 5.45 us."""


@dataclass(frozen=True)
class OpCost:
    """Work of one op: FLOPs, bytes through device memory, the dtype that sets the peak, and
    the kind of kernel (which calibrated efficiency applies): "matmul", "attention", "conv",
    "other"."""

    flops: float
    bytes: float
    dtype: str
    kind: str = "other"

    @property
    def free(self) -> bool:
        """A zero-cost op launches nothing (views, constants, index arithmetic)."""
        return self.flops == 0 and self.bytes == 0


FREE = OpCost(0.0, 0.0, "f32")


# ------------------------------------------------------------ element types ---


def element_bytes(element_type: Attribute) -> int:
    """Storage size of one element; i1 is a byte (torch.bool), `index` a 64-bit word."""
    if isinstance(element_type, Float16Type | BFloat16Type):
        return 2
    if isinstance(element_type, Float32Type):
        return 4
    if isinstance(element_type, Float64Type | IndexType):
        return 8
    if isinstance(element_type, IntegerType):
        return max(1, math.ceil(element_type.width.data / 8))
    return 4  # an element type gimlet does not know yet: assume a word


def dtype_name(element_type: Attribute) -> str:
    """The name Device.peak_flops is keyed by: "f32", "bf16", "i64", "ui8", ..."""
    if isinstance(element_type, Float16Type):
        return "f16"
    if isinstance(element_type, BFloat16Type):
        return "bf16"
    if isinstance(element_type, Float32Type):
        return "f32"
    if isinstance(element_type, Float64Type):
        return "f64"
    if isinstance(element_type, IntegerType):
        unsigned = element_type.signedness.data == Signedness.UNSIGNED
        return f"{'u' if unsigned else ''}i{element_type.width.data}"
    if isinstance(element_type, IndexType):
        return "index"
    return str(element_type)


def _shape(v: SSAValue, dim_hint: int) -> list[int]:
    assert isinstance(v.type, TensorType)
    return [dim_hint if d == DYN else d for d in v.type.get_shape()]


def _numel(v: SSAValue, dim_hint: int) -> int:
    return math.prod(_shape(v, dim_hint))


def value_bytes(v: SSAValue, dim_hint: int = 1) -> int:
    """Bytes of a value; each `?` dim counts as `dim_hint`. Scalars (index, ...) are one element."""
    if isinstance(v.type, TensorType):
        return _numel(v, dim_hint) * element_bytes(v.type.element_type)
    return element_bytes(v.type)


def weight_bytes(op: Operation) -> int:
    """Bytes an op keeps resident on its device: a gml.param's (static) tensor, or a literal."""
    if isinstance(op, gml.ParamOp | gml.ConstantOp):
        return value_bytes(op.results[0])
    return 0


# ------------------------------------------------------------------ op cost ---


def _dtype(v: SSAValue) -> str:
    return dtype_name(v.type.element_type) if isinstance(v.type, TensorType) else "f32"


def _tensor_bytes(values: Iterable[SSAValue], dim_hint: int) -> int:
    return sum(value_bytes(v, dim_hint) for v in values if isinstance(v.type, TensorType))


def _in_out_bytes(op: Operation, dim_hint: int) -> int:
    """Every tensor operand read once (broadcast ones too: caches serve the repeats) plus
    every result written once."""
    return _tensor_bytes(op.operands, dim_hint) + _tensor_bytes(op.results, dim_hint)


def _fusion_cost(op: gml.FusionOp, dim_hint: int) -> OpCost:
    """One kernel: the inner work, but only traffic that crosses the region boundary;
    intermediates stay in registers."""
    inner = [o for o in op.body.walk() if o is not op]
    costs = [op_cost(o, dim_hint) for o in inner]
    if all(c.free for c in costs):
        return FREE
    defined = {r for o in inner for r in o.results}
    defined |= {
        a for o in [op, *inner] for region in o.regions for b in region.blocks for a in b.args
    }
    external = {v for o in inner for v in o.operands if v not in defined}
    nbytes = _tensor_bytes(list(external), dim_hint) + _tensor_bytes(op.results, dim_hint)
    dtype = max(costs, key=lambda c: c.flops).dtype
    return OpCost(sum(c.flops for c in costs), float(nbytes), dtype)


def is_load_time(op: Operation) -> bool:
    """A weight, a literal, or a layout change of them (a transposed weight): work done once,
    not per call, so it costs nothing per call wherever it runs.

    The GPU backends evaluate every value computed from weights alone when the program loads
    and upload the result (backends/gpu load_time_values); the C++ backend reads a weight's
    transpose through its BLAS call's transpose flag (a Linear's weight, the common case).
    Placement copies these ops into every segment that reads them (solvers.is_free), so a
    weight never travels; op_cost charges them nothing, so the solver, the modelled timeline
    (schedule.simulate) and --explain all price them alike.
    """
    if isinstance(op, _WEIGHTS):
        return True
    return isinstance(op, _LAYOUT) and all(
        isinstance(v.owner, Operation) and is_load_time(v.owner) for v in op.operands
    )


def op_cost(op: Operation, dim_hint: int = 1) -> OpCost:
    """FLOPs and bytes of one op per call, `?` dims counted as `dim_hint`.

    Ops of other dialects (arith index math, func.return, ...) cost nothing: they either run
    on the host or are bookkeeping. Load-time ops (is_load_time) cost nothing either.
    """
    if isinstance(op, gml.FusionOp):
        return _fusion_cost(op, dim_hint)
    if isinstance(op, _FREE) or not op.name.startswith("gml.") or not op.results:
        return FREE
    if is_load_time(op):  # a transposed weight, say: computed once when the program loads
        return FREE
    out = op.results[0]
    # The arithmetic runs in the result's type, except that a comparison computes in its
    # operands' type and only writes i1.
    dtype = _dtype(out)
    if dtype == "i1" and op.operands:
        dtype = _dtype(op.operands[0])
    n_out = _numel(out, dim_hint)
    io = float(_in_out_bytes(op, dim_hint))

    if isinstance(op, gml.MatmulOp):
        # 2*M*N*K per batch element; the result shape already carries broadcast batch dims.
        k = _shape(op.lhs, dim_hint)[-1]
        return OpCost(2.0 * n_out * k, io, dtype, "matmul")
    if isinstance(op, gml.SdpaOp):
        # QK^T (2*L*S*E) and PV (2*L*S*Ev) per batch*head, plus the softmax over L*S scores;
        # a causal mask skips about half the (L, S) blocks in flash-attention kernels.
        *bh, lq, e = _shape(op.query, dim_hint)
        s, ev = _shape(op.key, dim_hint)[-2], _shape(op.value, dim_hint)[-1]
        scores = math.prod(bh) * lq * s
        flops = scores * (2.0 * e + 2.0 * ev + _PER_ELEMENT[gml.SoftmaxOp])
        return OpCost(flops / 2 if op.is_causal.value.data else flops, io, dtype, "attention")
    if isinstance(op, gml.ConvOp):
        # Each output element is a dot product over Cin/groups * kernel window: the weight's
        # dims after the first, whatever the number of spatial dims.
        window = math.prod(_shape(op.weight, dim_hint)[1:])
        return OpCost(2.0 * n_out * window, io, dtype, "conv")
    if isinstance(op, gml.MaxPool2dOp | gml.AvgPool2dOp):
        kh, kw = (int(v) for v in op.kernel.get_values())  # type: ignore[attr-defined]
        return OpCost(float(n_out * kh * kw), io, dtype)
    if isinstance(op, gml.EmbeddingOp | gml.GatherOp | gml.IndexOp):
        # Only the rows picked are read, not the whole table (a 50k-row vocabulary is 150 MB):
        # indices in, the picked elements read, the result written.
        idx = _tensor_bytes(op.operands[1:], dim_hint)
        return OpCost(0.0, float(idx + 2 * value_bytes(out, dim_hint)), dtype)
    if isinstance(op, gml.SliceOp):
        # Reads just the slice (a KV-cache window need not touch the rest) and writes it.
        return OpCost(0.0, 2.0 * value_bytes(out, dim_hint), dtype)
    if isinstance(op, _COPIES):
        return OpCost(0.0, io, dtype)
    if isinstance(op, gml.FullOp | gml.ArangeOp):
        return OpCost(float(n_out), float(value_bytes(out, dim_hint)), dtype)
    if isinstance(op, gml.ReduceOp | gml.CumsumOp | gml.AdaptiveAvgPool2dOp):
        return OpCost(float(_numel(op.operands[0], dim_hint)), io, dtype)
    # Elementwise ops and normalizations: a fixed number of FLOPs per result element.
    return OpCost(_PER_ELEMENT.get(type(op), 1.0) * n_out, io, dtype)


def op_time(cost: OpCost, device: Device, calibrated: bool = True) -> float:
    """Seconds on `device`: the slower of compute and memory, plus one launch.

    `calibrated` derates the datasheet rates by the measured efficiencies above and takes a
    measured launch overhead where the device has one; `calibrated=False` is the bare roofline
    max(flops / peak, bytes / bandwidth) + device.launch_overhead. Free ops take no time.
    """
    if cost.free:
        return 0.0
    peak, bandwidth = device.flops_for(cost.dtype), device.mem_bandwidth
    if calibrated:
        peak *= COMPUTE_EFFICIENCY.get(cost.kind, 1.0)
        bandwidth *= MEMORY_EFFICIENCY
    return max(cost.flops / peak, cost.bytes / bandwidth) + launch_overhead(device, calibrated)


def launch_overhead(device: Device, calibrated: bool = True) -> float:
    """Seconds op_time adds per op on `device`: its measured figure where there is one."""
    if calibrated:
        return MEASURED_LAUNCH_OVERHEAD.get(device.model, device.launch_overhead)
    return device.launch_overhead
