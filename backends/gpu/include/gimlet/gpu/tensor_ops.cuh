// Gather, constant padding, arg-reductions and variance (lowered by
// backends/gpu/tensor_ops.py). Included at the end of gml_gpu.cuh; HIP-compatible like
// the rest of the header: vendor names only through the portability block's macros.
#pragma once

#include "gimlet/gpu/gml_gpu.cuh"

namespace gml {

// A contiguous walk over `dims` reading a source through its own strides (the source
// of a permuted copy, the non-gathered dims of a gather). Own struct, not the
// elementwise Index: its layout follows only this file's lowerings.
template <int R>
struct Strided {
  int64_t dims[R > 0 ? R : 1], src[R > 0 ? R : 1];
};
template <int R>
inline Strided<R> strided_from(const int64_t* p) {
  Strided<R> s{};
  for (int d = 0; d < R; ++d) {
    s.dims[d] = p[d];
    s.src[d] = p[R + d];
  }
  return s;
}
// the source offset of element i of the walk
template <int R>
GML_D int64_t source_offset(const Strided<R>& s, int64_t i) {
  int64_t off = 0;
#pragma unroll
  for (int d = R - 1; d >= 0; --d) {
    off += (i % s.dims[d]) * s.src[d];
    i /= s.dims[d];
  }
  return off;
}

// y (contiguous over the walk's dims) = x read through the walk's strides
template <class T, int R>
__global__ void permute_copy(int64_t n, Strided<R> s, const T* __restrict__ x, T* __restrict__ y) {
  GML_FOR(i, n) y[i] = x[source_offset(s, i)];
}

// aten.gather along one dim: y and idx share a contiguous shape (the walk's dims); the
// walk's strides are x's with the gathered dim's set to 0, which is `stride` times the
// index read instead (negative indices wrap; out of range reads 0).
template <class T, class I, int R>
__global__ void gather_dim(int64_t n, Strided<R> s, int64_t rows, int64_t stride,
                           const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ y) {
  GML_FOR(e, n) {
    int64_t r = int64_t(idx[e]);
    if (r < 0) r += rows;
    y[e] = (r >= 0 && r < rows) ? x[source_offset(s, e) + r * stride] : T{};
  }
}

// Constant padding (aten.constant_pad_nd): output coordinate c reads input c - low;
// outside the input it is `fill`. A negative low/high crops, by the same formula.
template <int R>
struct PadIndex {
  int64_t out[R > 0 ? R : 1], in[R > 0 ? R : 1], low[R > 0 ? R : 1];
};
template <int R>
inline PadIndex<R> pad_from(const int64_t* p) {
  PadIndex<R> g{};
  for (int d = 0; d < R; ++d) {
    g.out[d] = p[d];
    g.in[d] = p[R + d];
    g.low[d] = p[2 * R + d];
  }
  return g;
}
template <class T, int R>
__global__ void pad(int64_t n, PadIndex<R> g, T fill, const T* __restrict__ x, T* __restrict__ y) {
  GML_FOR(i, n) {
    int64_t rest = i, src = 0, stride = 1;
    bool inside = true;
#pragma unroll
    for (int d = R - 1; d >= 0; --d) {
      const int64_t s = rest % g.out[d] - g.low[d];
      rest /= g.out[d];
      inside = inside && s >= 0 && s < g.in[d];
      src += s * stride;
      stride *= g.in[d];
    }
    y[i] = inside ? x[src] : fill;
  }
}

// ---------------------------------------------------------------- arg-reductions
// Does element (v, i) beat (best, bi) for argmax (MAX) or argmin? NaN is the extreme
// and the lower index wins ties, as in torch; `bi < 0` is "nothing yet". The order is
// total, so a reduction in any order finds the same element.
template <bool MAX, class V>
GML_D bool arg_beats(V v, int64_t i, V best, int64_t bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  const bool vn = v != v, bn = best != best;
  if (vn || bn) return vn && (!bn || i < bi);
  if (v == best) return i < bi;
  return MAX ? v > best : v < best;
}

// one thread per output over the middle axis of a contiguous (outer, n, inner) view
template <class T, bool MAX>
__global__ void arg_mid(int64_t outer, int64_t n, int64_t inner, const T* __restrict__ x,
                        int64_t* __restrict__ y) {
  using V = decltype(load(x));
  GML_FOR(o, outer * inner) {
    const T* p = x + (o / inner) * n * inner + o % inner;
    V best = load(p);
    int64_t bi = 0;
    for (int64_t j = 1; j < n; ++j) {
      const V v = load(p + j * inner);
      if (arg_beats<MAX>(v, j, best, bi)) {
        best = v;
        bi = j;
      }
    }
    y[o] = bi;
  }
}

// one block per row of a contiguous (rows, n) view (argmax over a vocabulary)
template <class T, bool MAX>
__global__ void arg_rows(int64_t n, const T* __restrict__ x, int64_t* __restrict__ y) {
  using V = decltype(load(x));
  using S = std::conditional_t<std::is_integral_v<V>, long long, V>;  // a shuffle type
  const T* p = x + int64_t(blockIdx.x) * n;
  V best{};
  int64_t bi = -1;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const V v = load(p + j);
    if (arg_beats<MAX>(v, j, best, bi)) {
      best = v;
      bi = j;
    }
  }
  __shared__ S part_v[1024 / GML_WARP];
  __shared__ long long part_i[1024 / GML_WARP];
  const int lane = threadIdx.x % GML_WARP, warp = threadIdx.x / GML_WARP;
  for (int round = 0; round < 2; ++round) {
#pragma unroll
    for (int m = GML_WARP / 2; m > 0; m >>= 1) {
      const V v = V(GML_SHFL_XOR(S(best), m));
      const int64_t i = int64_t(GML_SHFL_XOR((long long)bi, m));
      if (arg_beats<MAX>(v, i, best, bi)) {
        best = v;
        bi = i;
      }
    }
    if (round == 1) break;
    if (lane == 0) {
      part_v[warp] = S(best);
      part_i[warp] = bi;
    }
    __syncthreads();
    const bool has = lane < int(blockDim.x / GML_WARP);
    best = has ? V(part_v[lane]) : V{};
    bi = has ? int64_t(part_i[lane]) : -1;
  }
  if (threadIdx.x == 0) y[blockIdx.x] = bi;
}

// ---------------------------------------------------------------- variance
// sum((x - mean)^2) / max(n - correction, 0) in double (as the oracle, numpy's var on
// float64): inf or nan where n <= correction, as in torch.
template <class T, class O>
__global__ void var_mid(int64_t outer, int64_t n, int64_t inner, double correction,
                        const T* __restrict__ x, O* __restrict__ y) {
  GML_FOR(o, outer * inner) {
    const T* p = x + (o / inner) * n * inner + o % inner;
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += double(load(p + j * inner));
    const double mean = s / double(n);
    double ss = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double d = double(load(p + j * inner)) - mean;
      ss += d * d;
    }
    const double dof = double(n) - correction;
    store(y + o, ss / (dof > 0.0 ? dof : 0.0));
  }
}

template <class T, class O>
__global__ void var_rows(int64_t n, double correction, const T* __restrict__ x, O* __restrict__ y) {
  const T* p = x + int64_t(blockIdx.x) * n;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += double(load(p + j));
  const double mean = block_reduce<double, false>(s) / double(n);
  double ss = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const double d = double(load(p + j)) - mean;
    ss += d * d;
  }
  ss = block_reduce<double, false>(ss);
  const double dof = double(n) - correction;
  if (threadIdx.x == 0) store(y + blockIdx.x, ss / (dof > 0.0 ? dof : 0.0));
}

}  // namespace gml
