// Decode's GEMVs, part 1: their sizes and the rows x they multiply (Rows: x as stored;
// LnRows: x through a layer norm computed by each warp; LnFoldRows: a layer norm folded into
// the weight). gemv.cuh has the products. Part of gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/reductions.cuh"

namespace gml {

// Decode-time matrix-vector products: acc[r] = sum_k x[r, k] * w[col, k] for r < M (w as
// nn.Linear stores it, n x k), a warp per output column, 16-byte loads along k, all M
// rows sharing each weight load. Bandwidth-bound: the weight is read once. Generated
// kernels pass their epilogue (bias, activation, residual, store) to gemv_nt.
constexpr int GEMV_THREADS = 256, GEMV_COLS = GEMV_THREADS / GML_WARP;  // a warp per column

// a float result as a T would hold it (a matmul's output before its epilogue, a
// normalized GEMV row)
template <class T>
GML_HD float rounded_as(float x) {
  if constexpr (is_half<T>::value)
    return rounded<T>(x);
  else
    return x;
}
// The 16 bytes at p (aligned), widened to float.
template <class T>
GML_D void load_chunk(const T* p, float (&out)[16 / sizeof(T)]) {
  T v[16 / sizeof(T)];
  *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int e = 0; e < int(16 / sizeof(T)); ++e) out[e] = float(load(&v[e]));
}

// The GEMV's rows: x as stored, or x through a layer norm over k (decode: the norm that
// feeds a Linear is computed by each warp on the fly instead of by its own kernel; the
// normalized value is rounded to T, as the norm's output would be).
// Every rows type also gives `column(col)`, what its column needs loaded before the wait,
// and `finish(acc, column, k)`, applied to the warp's sums before the epilogue; STATEFUL
// rows accumulate per warp as chunks are read (one column a warp, no split: S == 1).
template <class T>
struct Rows {
  static constexpr bool STATEFUL = false;
  const T* __restrict__ x;
  template <int E>
  struct Early {};  // nothing to load before the wait
  template <int E>
  GML_D Early<E> early(int64_t, int64_t, int64_t) const {
    return {};
  }
  struct Column {};
  GML_D Column column(int64_t) const { return {}; }
  template <int M>
  GML_D void finish(float (&)[M], const Column&, int64_t) const {}
  template <int M>
  GML_D void prepare(int64_t) {}
  GML_D float at(int r, int64_t k, int64_t j) const { return float(load(x + r * k + j)); }
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)]) const {
    load_chunk(x + r * k + j, out);
  }
  template <int E>
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)], const Early<E>&,
                   int) const {
    chunk(r, k, j, out);
  }
};
template <class T>
struct LnRows {
  static constexpr bool STATEFUL = false;
  const T* __restrict__ x;
  const T* __restrict__ g;  // weight and bias: nullptr when absent
  const T* __restrict__ b;
  float eps;
  struct Column {};
  GML_D Column column(int64_t) const { return {}; }
  template <int M>
  GML_D void finish(float (&)[M], const Column&, int64_t) const {}
  float mean[4] = {0.f, 0.f, 0.f, 0.f}, rstd[4] = {1.f, 1.f, 1.f, 1.f};
  // The norm's weight and bias at the lane's first E chunks of 16 bytes (j0, j0 + step,
  // ...), loaded before the wait (weights: nothing in the segment writes them), so that
  // normalizing x waits on no load of its own. (prefetch.global.L1 instead made these
  // kernels 2.4x slower on the H200: benchmarks/results/gpu_gpt2_runT.md.)
  template <int E>
  struct Early {
    uint4 g[E], b[E];
  };
  template <int E>
  GML_D Early<E> early(int64_t k, int64_t j0, int64_t step) const {
    Early<E> e{};
#pragma unroll
    for (int u = 0; u < E; ++u) {
      const int64_t j = j0 + u * step;
      if (j < k && g) e.g[u] = *reinterpret_cast<const uint4*>(g + j);
      if (j < k && b) e.b[u] = *reinterpret_cast<const uint4*>(b + j);
    }
    return e;
  }
  // two passes per row (the mean, then squared deviations from it, as torch), the
  // warp's lanes along k; 16-byte loads where k allows, so a row's loads are in flight
  // together (the second pass reads L1)
  template <int M>
  GML_D void prepare(int64_t k) {
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const T* xr = x + r * k;
      mean[r] = warp_sum(lane_sum(xr, k, [](float v) { return v; })) / float(k);
      const float mu = mean[r];
      const float var = warp_sum(lane_sum(xr, k, [mu](float v) { return (v - mu) * (v - mu); }));
      rstd[r] = rsqrtf(var / float(k) + eps);
    }
  }
  // this lane's share of sum f(x[j]) over a row of k
  template <class F>
  GML_D static float lane_sum(const T* xr, int64_t k, F f) {
    const int lane = threadIdx.x % GML_WARP;
    constexpr int V = 16 / sizeof(T);
    float s = 0.f;
    if (k % V == 0) {
#pragma unroll 4
      for (int64_t j = int64_t(lane) * V; j < k; j += int64_t(GML_WARP) * V) {
        float c[V];
        load_chunk(xr + j, c);
#pragma unroll
        for (int e = 0; e < V; ++e) s += f(c[e]);
      }
    } else {
      for (int64_t j = lane; j < k; j += GML_WARP) s += f(float(load(xr + j)));
    }
    return s;
  }
  GML_D float norm(int r, int64_t j, float v) const {
    float o = (v - mean[r]) * rstd[r];
    if (g) o *= float(load(g + j));
    if (b) o += float(load(b + j));
    return rounded_as<T>(o);
  }
  GML_D float at(int r, int64_t k, int64_t j) const {
    return norm(r, j, float(load(x + r * k + j)));
  }
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)]) const {
    uint4 gv{}, bv{};
    if (g) gv = *reinterpret_cast<const uint4*>(g + j);  // j is a multiple of 16 bytes here
    if (b) bv = *reinterpret_cast<const uint4*>(b + j);
    normalize(r, k, j, gv, bv, out);
  }
  // chunk u < E of the lane's first, its weight and bias loaded early
  template <int E>
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)], const Early<E>& e,
                   int u) const {
    normalize(r, k, j, e.g[u], e.b[u], out);
  }
  GML_D void normalize(int r, int64_t k, int64_t j, const uint4& g16, const uint4& b16,
                       float (&out)[16 / sizeof(T)]) const {
    constexpr int V = 16 / sizeof(T);
    const T* gt = reinterpret_cast<const T*>(&g16);
    const T* bt = reinterpret_cast<const T*>(&b16);
    load_chunk(x + r * k + j, out);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float o = (out[e] - mean[r]) * rstd[r];
      if (g) o *= float(load(&gt[e]));
      if (b) o += float(load(&bt[e]));
      out[e] = rounded_as<T>(o);
    }
  }
};

// x through a layer norm folded into the GEMV's weight at load time: W' = W diag(g) (the
// norm's weight scales W's columns along k), c1 = W' 1 and c2 = W b (the norm's bias), as
// floats a column. Column n's sum is then
//   sum_k W'[n,k] (x_k - mean) rstd + c2[n] = rstd (W'x - mean c1[n]) + c2[n],
// and the statistics come from the pass over x that the product makes (sums of x and of
// x^2 beside W'x, reduced with it), not from two passes before it: GPT-2 decode's qkv and
// fc GEMVs each spent ~1.5 us of their ~4.3 us share of the chain on those passes
// (benchmarks/results/gpu_decode_timeline_run13_nostats.log). The variance is
// E[x^2] - mean^2 in f32 (clamped at 0), exact enough while the row's spread is not
// ~1e-3 of its mean; the normalized x is not rounded to T first, as the norm's output
// would be (f16: within the product's own rounding).
template <class T>
struct LnFoldRows {
  static constexpr bool STATEFUL = true;
  const T* __restrict__ x;
  const float* __restrict__ c1;
  const float* __restrict__ c2;
  float eps;
  mutable float s1[4] = {0.f, 0.f, 0.f, 0.f}, s2[4] = {0.f, 0.f, 0.f, 0.f};
  template <int E>
  struct Early {};
  template <int E>
  GML_D Early<E> early(int64_t, int64_t, int64_t) const {
    return {};
  }
  struct Column {
    float c1 = 0.f, c2 = 0.f;
  };
  GML_D Column column(int64_t col) const { return {c1[col], c2[col]}; }
  template <int M>
  GML_D void prepare(int64_t) {}
  GML_D float at(int r, int64_t k, int64_t j) const {
    const float v = float(load(x + r * k + j));
    s1[r] += v;
    s2[r] += v * v;
    return v;
  }
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)]) const {
    load_chunk(x + r * k + j, out);
#pragma unroll
    for (int e = 0; e < int(16 / sizeof(T)); ++e) {
      s1[r] += out[e];
      s2[r] += out[e] * out[e];
    }
  }
  template <int E>
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)], const Early<E>&,
                   int) const {
    chunk(r, k, j, out);
  }
  // every lane: acc holds the warp's sums already; the statistics are reduced here
  template <int M>
  GML_D void finish(float (&acc)[M], const Column& c, int64_t k) const {
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const float mean = warp_sum(s1[r]) / float(k);
      const float var = fmaxf(warp_sum(s2[r]) / float(k) - mean * mean, 0.f);
      acc[r] = rsqrtf(var + eps) * (acc[r] - mean * c.c1) + c.c2;
    }
  }
};

}  // namespace gml
