// Warp and block reductions, and the kernels built on them: sum/mean/max/min/any over an
// axis, softmax over rows (with a causal limit or an attention mask) and the running sum.
// Part of gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/indexing.cuh"

namespace gml {

// ---------------------------------------------------------------- block reductions
template <class T>
GML_D T warp_sum(T v) {
#pragma unroll
  for (int m = GML_WARP / 2; m > 0; m >>= 1) v += GML_SHFL_XOR(v, m);
  return v;
}
template <class T>
GML_D T warp_max(T v) {
#pragma unroll
  for (int m = GML_WARP / 2; m > 0; m >>= 1) v = maxnan(v, GML_SHFL_XOR(v, m));
  return v;
}
// the identity of max: -inf for floats, the smallest value for integers
template <class T>
GML_HD T lowest() {
  if constexpr (std::is_integral_v<T>)
    return std::numeric_limits<T>::lowest();
  else
    return -std::numeric_limits<T>::infinity();
}
// Sum / max over the block (blockDim.x a multiple of the warp, at most 1024 threads).
template <class T, bool MAX>
GML_D T block_reduce(T v) {
  __shared__ T part[1024 / GML_WARP];
  const int lane = threadIdx.x % GML_WARP, warp = threadIdx.x / GML_WARP;
  v = MAX ? warp_max(v) : warp_sum(v);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / GML_WARP;
  T r = lane < warps ? part[lane] : (MAX ? lowest<T>() : T(0));
  return MAX ? warp_max(r) : warp_sum(r);
}

// ---------------------------------------------------------------- kernels
// Reductions over the middle axis of a contiguous (outer, n, inner) view.
enum class Red : int { Sum = 0, Mean = 1, Max = 2, Min = 3, Any = 4 };

template <class T, class O, Red K>
__global__ void reduce_mid(int64_t outer, int64_t n, int64_t inner, const T* __restrict__ x,
                           O* __restrict__ y) {
  // integers sum exactly in 64 bits; floats in float (double for double)
  using V = std::conditional_t<std::is_integral_v<T>, long long,
                               std::conditional_t<std::is_same_v<T, double>, double, float>>;
  GML_FOR(o, outer * inner) {
    const int64_t a = o / inner, b = o % inner;
    const T* p = x + a * n * inner + b;
    V acc = K == Red::Max   ? lowest<V>()
            : K == Red::Min ? -lowest<V>() - (std::is_integral_v<V> ? 1 : 0)
                            : V(0);
    for (int64_t j = 0; j < n; ++j) {
      const V v = V(load(p + j * inner));
      if constexpr (K == Red::Max)
        acc = maxnan(v, acc);
      else if constexpr (K == Red::Min)
        acc = minnan(v, acc);
      else if constexpr (K == Red::Any)
        acc = (acc != V(0) || v != V(0)) ? V(1) : V(0);
      else
        acc += v;
    }
    if constexpr (K == Red::Mean) acc = acc / V(n);
    store(y + o, acc);
  }
}

// order reversal for min-as-max: -x for floats, ~x for integers (no overflow at lowest)
template <class V>
GML_D V flip(V x) {
  if constexpr (std::is_integral_v<V>)
    return ~x;
  else
    return -x;
}

// Rows of a contiguous (rows, n) view reduced by one block each (inner == 1 fast path).
template <class T, class O, Red K>
__global__ void reduce_rows(int64_t n, const T* __restrict__ x, O* __restrict__ y) {
  const T* p = x + int64_t(blockIdx.x) * n;
  // min is the max of the negated values, any the max of (x != 0): one block reduction;
  // integers accumulate exactly in 64 bits (min of integers: max of ~x, no overflow)
  constexpr bool MAX = K == Red::Max || K == Red::Min || K == Red::Any;
  using V = std::conditional_t<std::is_integral_v<T>, long long, float>;
  V acc = MAX ? lowest<V>() : V(0);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    V v = V(load(p + j));
    if constexpr (K == Red::Min) v = flip(v);
    if (K == Red::Any) v = v != V(0) ? V(1) : V(0);
    acc = MAX ? maxnan(v, acc) : acc + v;
  }
  acc = block_reduce<V, MAX>(acc);
  if constexpr (K == Red::Min) acc = flip(acc);
  if (K == Red::Any) acc = acc > V(0) ? V(1) : V(0);  // an empty row: lowest, false
  if (threadIdx.x == 0) store(y + blockIdx.x, K == Red::Mean ? acc / V(n) : acc);
}

// softmax / log_softmax over rows of n, one block per row. `bias(row, j)` gives what
// is added to x[row, j] * scale before the softmax (-inf hides the element): nothing,
// a causal limit or an attention mask (attention scores' rows are queries).
struct NoBias {
  GML_D float operator()(int64_t, int64_t) const { return 0.f; }
};
// key j is visible to query q (the row's position among tq) when j <= q + (n - tq)
struct Causal {
  int64_t n, tq;
  GML_D float operator()(int64_t row, int64_t j) const {
    return j <= (row % tq) + (n - tq) ? 0.f : -std::numeric_limits<float>::infinity();
  }
};
// an attention mask broadcast over the rows' [batch.., heads, tq] dims, then along keys
template <class M, int R>
struct Masked {
  const M* mask;
  Index<R, 1> rows;
  int64_t col_stride;
  Causal causal;
  bool is_causal;
  GML_D float operator()(int64_t row, int64_t j) const {
    int64_t off[1];
    offsets(rows, row, off);
    const M m = mask[off[0] + j * col_stride];
    float b = 0.f;
    if constexpr (std::is_same_v<M, bool>)
      b = m ? 0.f : -std::numeric_limits<float>::infinity();
    else
      b = float(load(&m));
    return is_causal ? b + causal(row, j) : b;
  }
};

template <class T, class O, bool LOG, class Bias>
__global__ void softmax_rows(int64_t n, const T* __restrict__ x, O* __restrict__ y, float scale,
                             Bias bias) {
  const int64_t row = blockIdx.x;
  const T* p = x + row * n;
  O* q = y + row * n;
  const float ninf = -std::numeric_limits<float>::infinity();
  float m = ninf;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    m = maxnan(float(load(p + j)) * scale + bias(row, j), m);
  m = block_reduce<float, true>(m);
  float s = 0.f;
  if (m != ninf)
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      s += expf(float(load(p + j)) * scale + bias(row, j) - m);
  s = block_reduce<float, false>(s);
  const float ls = logf(s);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = float(load(p + j)) * scale + bias(row, j) - m;
    if (LOG)
      store(q + j, v - ls);
    else
      store(q + j, m == ninf ? std::numeric_limits<float>::quiet_NaN() : expf(v) / s);
  }
}

// running sum along the middle axis of a contiguous (outer, n, inner) view
template <class T, class O>
__global__ void cumsum_mid(int64_t outer, int64_t n, int64_t inner, const T* __restrict__ x,
                           O* __restrict__ y) {
  using V = std::conditional_t<std::is_integral_v<O>, int64_t,
                               std::conditional_t<std::is_same_v<O, double>, double, float>>;
  GML_FOR(o, outer * inner) {
    const int64_t a = o / inner, b = o % inner;
    const int64_t base = a * n * inner + b;
    V acc = V(0);
    for (int64_t j = 0; j < n; ++j) {
      acc += V(load(x + base + j * inner));
      store(y + base + j * inner, acc);
    }
  }
}

}  // namespace gml
