// Layer norm kernels: any row length (layer_norm_rows), and rows held in registers, a
// warp or a block a row (layer_norm_reg). Part of gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/reductions.cuh"

namespace gml {

// layer norm over rows of n, one block per row (weight, bias optional): any n (rows
// longer than layer_norm_reg takes; it reads x three times)
template <class T>
__global__ void layer_norm_rows(int64_t n, const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ b, T* __restrict__ y, float eps) {
  const T* p = x + int64_t(blockIdx.x) * n;
  T* q = y + int64_t(blockIdx.x) * n;
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += float(load(p + j));
  const float mean = block_reduce<float, false>(s) / float(n);
  float v = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float d = float(load(p + j)) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(block_reduce<float, false>(v) / float(n) + eps);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    float o = (float(load(p + j)) - mean) * rstd;
    if (w) o *= float(load(w + j));
    if (b) o += float(load(b + j));
    store(q + j, o);
  }
}

// Layer norm over rows of n <= ROW elements held in registers: x is read once and y
// written once, 16 bytes at a time where every pointer is 16-byte aligned and n a multiple
// of that many elements. A warp per row (LN_THREADS / GML_WARP rows a block) while a row
// is at most 32 elements per lane (ROW <= LN_WARP_ROW), else a block of LN_THREADS per
// row. Same numerics as layer_norm_rows: float sums, the mean, then the sum of squared
// deviations from it (two passes over the registers), rsqrtf(var + eps).
constexpr int LN_THREADS = 128;
constexpr int LN_WARP_ROW = 32 * GML_WARP;  // elements a warp keeps, 32 a lane
template <int ROW>
inline unsigned layer_norm_blocks(int64_t rows) {
  constexpr int per_block = ROW <= LN_WARP_ROW ? LN_THREADS / GML_WARP : 1;
  return unsigned((rows + per_block - 1) / per_block);
}

template <class T, int ROW, bool VEC>
GML_D void layer_norm_row(int64_t n, const T* __restrict__ p, const T* __restrict__ w,
                          const T* __restrict__ b, T* __restrict__ q, float eps) {
  constexpr bool WARP = ROW <= LN_WARP_ROW;
  constexpr int TPR = WARP ? GML_WARP : LN_THREADS;       // threads a row
  constexpr int V = VEC ? 16 / sizeof(T) : 1;             // elements a load
  constexpr int LOADS = (ROW + TPR * V - 1) / (TPR * V);  // loads a thread
  const int t = WARP ? threadIdx.x % GML_WARP : threadIdx.x;
  auto sum = [](float v) {
    if constexpr (WARP)
      return warp_sum(v);
    else
      return block_reduce<float, false>(v);
  };
  // load l of thread t covers elements [(l * TPR + t) * V, + V): adjacent threads adjacent
  float v[LOADS][V];
  float s = 0.f;
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    const int64_t j = (int64_t(l) * TPR + t) * V;
    if constexpr (VEC) {
      alignas(16) T raw[V];
      if (j < n) *reinterpret_cast<uint4*>(raw) = *reinterpret_cast<const uint4*>(p + j);
#pragma unroll
      for (int e = 0; e < V; ++e) v[l][e] = j < n ? float(load(raw + e)) : 0.f;
    } else {
      v[l][0] = j < n ? float(load(p + j)) : 0.f;
    }
#pragma unroll
    for (int e = 0; e < V; ++e) s += v[l][e];
  }
  const float mean = sum(s) / float(n);
  float d2 = 0.f;
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    if ((int64_t(l) * TPR + t) * V >= n) continue;  // a whole load is in the row or none of it
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float d = v[l][e] - mean;
      d2 += d * d;
    }
  }
  const float rstd = rsqrtf(sum(d2) / float(n) + eps);
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    const int64_t j = (int64_t(l) * TPR + t) * V;
    if (j >= n) continue;
    alignas(16) T g[V], c[V], out[V];
    if constexpr (VEC) {
      if (w) *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(w + j);
      if (b) *reinterpret_cast<uint4*>(c) = *reinterpret_cast<const uint4*>(b + j);
    } else {
      if (w) g[0] = w[j];
      if (b) c[0] = b[j];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float o = (v[l][e] - mean) * rstd;
      if (w) o *= float(load(g + e));
      if (b) o += float(load(c + e));
      store(out + e, o);
    }
    if constexpr (VEC)
      *reinterpret_cast<uint4*>(q + j) = *reinterpret_cast<const uint4*>(out);
    else
      q[j] = out[0];
  }
}

template <class T, int ROW>
__global__ void __launch_bounds__(LN_THREADS)
    layer_norm_reg(int64_t rows, int64_t n, const T* __restrict__ x, const T* __restrict__ w,
                   const T* __restrict__ b, T* __restrict__ y, float eps) {
  constexpr bool WARP = ROW <= LN_WARP_ROW;
  const int64_t row = WARP ? int64_t(blockIdx.x) * (LN_THREADS / GML_WARP) + threadIdx.x / GML_WARP
                           : int64_t(blockIdx.x);
  if (row >= rows) return;  // a whole warp (a block's rows are whole warps)
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  // the same for every row: x's and y's rows stay aligned when n is a multiple of 16 bytes
  if (n % (16 / sizeof(T)) == 0 && aligned(x) && aligned(y) && aligned(w) && aligned(b))
    layer_norm_row<T, ROW, true>(n, x + row * n, w, b, y + row * n, eps);
  else
    layer_norm_row<T, ROW, false>(n, x + row * n, w, b, y + row * n, eps);
}

}  // namespace gml
