// Gathers and copies: embedding, index_select (take_mid), advanced indexing (gather_nd),
// arange, a padded GEMM result copied out unpadded (copy_pitched) and strided copies.
// Part of gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/indexing.cuh"
#include "gimlet/gpu/launch.cuh"

namespace gml {

// out[i, :] = weight[idx[i], :]: a thread copies 16 bytes where a row is a whole number of
// them (vec_width: the launch sizes its grid by it) and w and y are 16-byte aligned, else
// an element (an unaligned y gets a grid of the vector path's size, looping).
template <class T, class I>
__global__ void embedding(int64_t n_idx, int64_t dim, int64_t rows, const T* __restrict__ w,
                          const I* __restrict__ idx, T* __restrict__ y) {
  constexpr int64_t V = sizeof(T) < 16 ? 16 / sizeof(T) : 1;
  if (V > 1 && vec_width<T>(dim) == V && aligned16(w, y)) {
    const int64_t pieces = dim / V;  // a row's 16-byte pieces
    GML_FOR(c, n_idx * pieces) {
      const int64_t i = c / pieces, j = (c - i * pieces) * V;
      int64_t r = int64_t(idx[i]);
      if (r < 0) r += rows;
      uint4 v = {0u, 0u, 0u, 0u};  // T{}: all zero bits
      if (r >= 0 && r < rows) v = *reinterpret_cast<const uint4*>(w + r * dim + j);
      *reinterpret_cast<uint4*>(y + i * dim + j) = v;
    }
    return;
  }
  GML_FOR(e, n_idx * dim) {
    const int64_t i = e / dim, j = e % dim;
    int64_t r = int64_t(idx[i]);
    if (r < 0) r += rows;
    y[e] = (r >= 0 && r < rows) ? w[r * dim + j] : T{};
  }
}

// y[a, i, b] = x[a, idx[i], b] over a contiguous (outer, rows, inner) x: index_select
template <class T, class I>
__global__ void take_mid(int64_t outer, int64_t n_idx, int64_t rows, int64_t inner,
                         const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ y) {
  GML_FOR(e, outer * n_idx * inner) {
    const int64_t b = e % inner, i = (e / inner) % n_idx, a = e / (inner * n_idx);
    int64_t r = int64_t(idx[i]);
    if (r < 0) r += rows;
    y[e] = (r >= 0 && r < rows) ? x[(a * rows + r) * inner + b] : T{};
  }
}

// Advanced indexing by K integer tensors on consecutive dims (aten.index): the index
// tensors broadcast over domain `bix`; y[a, j, b] = x[a, idx_0[j], .., idx_K-1[j], b].
template <class I, int K>
struct IndexTensors {
  const I* p[K];
  int64_t rows[K];    // the indexed dims' sizes (negative indices wrap)
  int64_t stride[K];  // their strides in x
};
template <class T, class I, int R, int K>
__global__ void gather_nd(int64_t n, int64_t nb, int64_t inner, int64_t outer_stride,
                          Index<R, K> bix, IndexTensors<I, K> ts, const T* __restrict__ x,
                          T* __restrict__ y) {
  GML_FOR(e, n) {
    const int64_t b = e % inner, j = (e / inner) % nb, a = e / (inner * nb);
    int64_t off[K];
    offsets(bix, j, off);
    int64_t src = a * outer_stride + b;
    bool ok = true;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      int64_t r = int64_t(ts.p[k][off[k]]);
      if (r < 0) r += ts.rows[k];
      ok = ok && r >= 0 && r < ts.rows[k];
      src += r * ts.stride[k];
    }
    y[e] = ok ? x[src] : T{};
  }
}

template <class T>
__global__ void arange(int64_t n, double start, double step, T* __restrict__ y) {
  GML_FOR(i, n) store(y + i, start + double(i) * step);
}

// y (rows x n, contiguous) = x whose rows are `ld` elements apart (a padded GEMM result
// read by an op that wants it unpadded). A thread writes one 16-byte piece of y (its
// elements may straddle two rows of x: the loads are scalar but a warp's are adjacent, so
// coalesced), with 32-bit index math where x's span fits; an unaligned y, or rows shorter
// than a piece, take an element at a time.
template <class T>
inline unsigned copy_pitched_blocks(int64_t total, int threads) {
  return blocks_for((total + int64_t(16 / sizeof(T)) - 1) / int64_t(16 / sizeof(T)), threads);
}
template <class T>
__global__ void copy_pitched(int64_t rows, int64_t n, int64_t ld, const T* __restrict__ x,
                             T* __restrict__ y) {
  constexpr int V = 16 / sizeof(T);
  const int64_t total = rows * n;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  if (n >= V && rows * ld < (int64_t(1) << 31) && reinterpret_cast<uintptr_t>(y) % 16 == 0) {
    const uint32_t cols = uint32_t(n), pitch = uint32_t(ld), count = uint32_t(total);
    for (int64_t p = first; p * V < total; p += step) {
      const uint32_t e = uint32_t(p) * V;
      uint32_t r = e / cols, c = e - r * cols;
      alignas(16) T v[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        v[k] = e + k < count ? x[r * pitch + c] : T{};
        if (++c == cols) {  // n >= V: a piece crosses at most one row end
          c = 0;
          ++r;
        }
      }
      if (e + V <= count) {
        *reinterpret_cast<uint4*>(y + e) = *reinterpret_cast<const uint4*>(v);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k)  // unrolled: v stays in registers
          if (e + k < count) y[e + k] = v[k];
      }
    }
    return;
  }
  for (int64_t i = first; i < total; i += step) y[i] = x[(i / n) * ld + i % n];
}

// y (contiguous, `R` dims) = x read through strides (permute, expand, slice, concat)
template <class T, int R>
__global__ void copy_strided(int64_t n, Index<R, 2> ix, const T* __restrict__ x,
                             T* __restrict__ y) {
  GML_FOR(i, n) {
    int64_t off[2];
    offsets(ix, i, off);
    y[off[1]] = x[off[0]];
  }
}

}  // namespace gml
