// An elementwise kernel's domain and its operands' offsets in it (Index, offsets), the
// grid-stride loop, and the 16-byte vector loads and stores of elementwise kernels and
// embedding. Part of gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/base.cuh"

namespace gml {

// ---------------------------------------------------------------- indexing
constexpr int MAXR = 8;

// An elementwise kernel's domain and, per operand, its strides in that domain
// (0 where the operand is broadcast). The host coalesces dims that every operand walks
// contiguously, so only the last |rank| of the R dims are used (1: one flat loop); rank is
// negative for domains of 2^31 elements or more, whose index math needs 64 bits.
template <int R, int K>
struct Index {
  int64_t rank;
  int64_t dims[R > 0 ? R : 1];
  int64_t strides[K > 0 ? K : 1][R > 0 ? R : 1];
};

// An Index read from the parameter table: rank, R dims, then each operand's R strides.
template <int R, int K>
inline Index<R, K> index_from(const int64_t* p) {
  Index<R, K> ix{};
  ix.rank = p[0];
  for (int d = 0; d < R; ++d) ix.dims[d] = p[1 + d];
  for (int k = 0; k < K; ++k)
    for (int d = 0; d < R; ++d) ix.strides[k][d] = p[1 + R + k * R + d];
  return ix;
}

// The operands' offsets for linear domain index i.
template <int R, int K>
GML_D void offsets(const Index<R, K>& ix, int64_t i, int64_t (&off)[K > 0 ? K : 1]) {
  if (R == 0 || ix.rank == 1 || ix.rank == -1) {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = R == 0 ? 0 : i * ix.strides[k][R > 0 ? R - 1 : 0];
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
  if (ix.rank > 0) {  // domains under 2^31 elements: 32-bit division, far cheaper than 64-bit
    uint32_t u = uint32_t(i);
#pragma unroll
    for (int d = R - 1; d >= 0; --d) {
      if (d < R - ix.rank) break;
      const uint32_t n = uint32_t(ix.dims[d]), c = u % n;
      u /= n;
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += int64_t(c) * ix.strides[k][d];
    }
    return;
  }
  const int64_t rank = -ix.rank;
#pragma unroll
  for (int d = R - 1; d >= 0; --d) {
    if (d < R - rank) break;
    const int64_t c = i % ix.dims[d];
    i /= ix.dims[d];
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += c * ix.strides[k][d];
  }
}
// False for an output (operand k) broadcast along a dim where i's coordinate is not 0:
// such an output is written once, by the first thread along that dim.
template <int R, int K>
GML_D bool first_along_broadcast(const Index<R, K>& ix, int64_t i, int k) {
  bool first = true;
  const int64_t rank = ix.rank < 0 ? -ix.rank : ix.rank;
#pragma unroll
  for (int d = R - 1; d >= 0; --d) {
    if (d < R - rank) break;
    const int64_t c = i % ix.dims[d];
    i /= ix.dims[d];
    if (ix.strides[k][d] == 0 && c != 0) first = false;
  }
  return first;
}

// Grid-stride loops: a capped grid covers any size.
#define GML_FOR(i, n)                                                       \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------- vector access
// Elementwise kernels and embedding move V consecutive elements a thread, 16 bytes of
// their widest type, where the shapes and pointers allow it (backends/gpu/vectorize.py);
// a 2-byte element a thread is far below what HBM gives. (load_chunk, in gemv_rows.cuh,
// is the GEMVs' 16-byte load widened to float.)
template <int B>
struct Word;  // an unsigned type of B bytes: one access
template <>
struct Word<16> {
  using type = uint4;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<4> {
  using type = uint32_t;
};
template <>
struct Word<2> {
  using type = uint16_t;
};
template <>
struct Word<1> {
  using type = uint8_t;
};

// True where every pointer is 16-byte aligned.
template <class... T>
GML_HD bool aligned16(const T*... p) {
  return ((reinterpret_cast<uintptr_t>(p) % 16 == 0) && ...);
}

// Elements a thread of a row-wise copy of rows of `dim` elements: 16 bytes' worth where
// a row is a whole number of them, else 1.
template <class T>
GML_HD int64_t vec_width(int64_t dim) {
  constexpr int64_t V = sizeof(T) < 16 ? 16 / sizeof(T) : 1;
  return dim % V == 0 ? V : 1;
}

// out = the V elements at p (aligned to their V * sizeof(T) bytes: one access) as the
// compute type C, converted as load() converts one; where `stride` is 0 (an operand
// broadcast along the innermost dim) the one element at p, loaded once, V times.
template <class T, class C, int V>
GML_D void load_vec(const T* p, int64_t stride, C (&out)[V]) {
  if (stride == 0) {
    const C x = load(p);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = x;
    return;
  }
  using U = typename Word<V * sizeof(T)>::type;
  alignas(U) T v[V];
  *reinterpret_cast<U*>(v) = *reinterpret_cast<const U*>(p);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = load(&v[e]);
}
// The V elements at p (aligned as above) = in, each converted as store() converts it.
template <class T, class C, int V>
GML_D void store_vec(T* p, const C (&in)[V]) {
  using U = typename Word<V * sizeof(T)>::type;
  alignas(U) T v[V];
#pragma unroll
  for (int e = 0; e < V; ++e) store(&v[e], in[e]);
  *reinterpret_cast<U*>(p) = *reinterpret_cast<const U*>(v);
}

}  // namespace gml
