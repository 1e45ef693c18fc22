// gimlet's GPU kernel header: what generated segment code (backends/gpu/codegen.py)
// includes. It is written in the part of CUDA C++ that HIP also compiles: the only
// vendor names live in base.cuh's portability block, so the ROCm backend compiles the
// same generated files with hipcc and -DGML_HIP. The header is the pieces below, included
// in this order (each includes the pieces it uses, so any one also compiles alone).
//
// Conventions: tensors are contiguous, row-major, in one arena per segment (offsets
// from the memory plan; only a padded head's result has rows further apart, written by
// cuBLAS); f16/bf16 are stored as 16-bit values and computed in float, each op rounding
// its result as torch does; index arithmetic is int64_t, or 32-bit where a kernel checks
// that its sizes fit.
#pragma once

// the portability block, the host context (Ctx), 16-bit floats, scalar helpers
#include "gimlet/gpu/base.cuh"
// elementwise domains (Index, offsets), grid-stride loops, 16-byte vector access
#include "gimlet/gpu/indexing.cuh"
// programmatic dependent launch, L2 prefetch, persistent chains, grid sizes
#include "gimlet/gpu/launch.cuh"
// warp and block reductions; reduce, softmax and cumsum kernels
#include "gimlet/gpu/reductions.cuh"
// layer norm kernels
#include "gimlet/gpu/norms.cuh"
// embedding, index_select, advanced indexing, arange, pitched and strided copies
#include "gimlet/gpu/gather.cuh"
// decode GEMVs' sizes and rows (Rows, LnRows, LnFoldRows)
#include "gimlet/gpu/gemv_rows.cuh"
// decode GEMVs: gemv_nt, and gemv_nt_columns in a chain
#include "gimlet/gpu/gemv.cuh"
// concat_mid, flash-decoding and its combine, warp-a-row softmax
#include "gimlet/gpu/attention_decode.cuh"

// Kernels of the lowerings kept in their own modules (backends/gpu/conv.py, tensor_ops.py),
// and flash attention for prefill (lower_attention.py's sdpa).
#include "gimlet/gpu/attention.cuh"
#include "gimlet/gpu/conv.cuh"
#include "gimlet/gpu/tensor_ops.cuh"
