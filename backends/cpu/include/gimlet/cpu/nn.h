// Softmax, layer and batch norm, and 2-d pooling.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "gimlet/cpu/scalar_math.h"
#include "gimlet/cpu/tensor.h"
#include "gimlet/cpu/thread_pool.h"

namespace gml {

inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// One softmax row of n values read at stride `st`: exp'd in place into q, then scaled.
template <class T>
inline void softmax_row(const T* p, T* q, int64_t n, int64_t st, bool log) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < n; ++k) m = maxnan(p[k * st], m);
  T s = 0;
  if (log) {
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < n; ++k) s += vexp(p[k * st] - m);
    const T ls = std::log(s);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) q[k * st] = p[k * st] - m - ls;
    return;
  }
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) {
    const T e = vexp(p[k * st] - m);
    q[k * st] = e;
    s += e;
  }
  const T inv = T(1) / s;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) q[k * st] *= inv;
}

template <class T>
Tensor<T> softmax(const Tensor<T>& x, int dim, bool log) {
  Tensor<T> y = empty<T>(x.shape);
  int64_t outer = 1, inner = 1, n = x.shape.d[dim];
  for (int i = 0; i < dim; ++i) outer *= x.shape.d[i];
  for (int i = dim + 1; i < x.shape.rank; ++i) inner *= x.shape.d[i];
  parallel_for(outer * inner, 8 * n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t o = i / inner, j = i % inner;
      softmax_row(x.data + o * n * inner + j, y.data + o * n * inner + j, n, inner, log);
    }
  });
  return y;
}

template <class T>
Tensor<T> layer_norm(const Tensor<T>& x, const T* w, const T* b, int ndim, double eps) {
  Tensor<T> y = empty<T>(x.shape);
  int64_t n = 1;
  for (int i = x.shape.rank - ndim; i < x.shape.rank; ++i) n *= x.shape.d[i];
  const int64_t rows = n ? x.shape.numel() / n : 0;
  parallel_for(rows, 4 * n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* p = x.data + r * n;
      T* q = y.data + r * n;
      double s = 0, ss = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < n; ++k) s += p[k];
      const double mean = s / double(n);
#pragma omp simd reduction(+ : ss)
      for (int64_t k = 0; k < n; ++k) ss += (p[k] - mean) * (p[k] - mean);
      const T mu = T(mean), rstd = T(1.0 / std::sqrt(ss / double(n) + eps));
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        T v = (p[k] - mu) * rstd;
        if (w) v *= w[k];
        if (b) v += b[k];
        q[k] = v;
      }
    }
  });
  return y;
}

template <class T>
Tensor<T> batch_norm(const Tensor<T>& x, const T* w, const T* b, const T* mean, const T* var,
                     double eps) {
  Tensor<T> y = empty<T>(x.shape);
  const int64_t nb = x.shape.d[0], c = x.shape.d[1];
  const int64_t inner = c ? x.shape.numel() / (nb * c) : 0;
  parallel_for(nb * c, inner, [&](int64_t i0, int64_t i1) {
    for (int64_t ic = i0; ic < i1; ++ic) {
      const int64_t i = ic / c, ch = ic % c;
      const T scale = T(w[ch] / std::sqrt(double(var[ch]) + eps));
      const T shift = b[ch] - mean[ch] * scale;
      const T* p = x.data + (i * c + ch) * inner;
      T* q = y.data + (i * c + ch) * inner;
#pragma omp simd
      for (int64_t k = 0; k < inner; ++k) q[k] = p[k] * scale + shift;
    }
  });
  return y;
}

// 2-d max/avg pooling; the avg divisor counts padding but not the ceil-mode overhang.
// One output row at a time: each kernel tap is a branch-free (vectorizable) pass over
// the output columns whose input lies inside the image.
// The common 2x2 stride-2 unpadded window: per output row, the elementwise max (or sum)
// of its two input rows first (unit stride, vectorizes), then of neighbouring pairs: 4x
// faster than a strided pass per tap (10 vs 39 us for 32x64x64 on 2 cores).
template <class T>
void pool2x2_rows(const Tensor<T>& x, Tensor<T>& y, bool is_max, int64_t oh, int64_t ow) {
  const int64_t nc = x.shape.d[0] * x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  parallel_for(nc * oh, ow * 4, [&](int64_t r0, int64_t r1) {
    constexpr int64_t CHUNK = 512;  // output columns per pass (the pair buffer's half)
    T m[2 * CHUNK];
    for (int64_t rr = r0; rr < r1; ++rr) {
      const T* p = x.data + ((rr / oh) * h + 2 * (rr % oh)) * wd;
      const T* q = p + wd;
      T* out = y.data + rr * ow;
      for (int64_t j0 = 0; j0 < ow; j0 += CHUNK) {
        const int64_t n = std::min(CHUNK, ow - j0);
        const T* a = p + 2 * j0;
        const T* b = q + 2 * j0;
        if (is_max) {
#pragma omp simd
          for (int64_t j = 0; j < 2 * n; ++j) m[j] = maxnan(a[j], b[j]);
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) out[j0 + k] = maxnan(m[2 * k], m[2 * k + 1]);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < 2 * n; ++j) m[j] = a[j] + b[j];
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) out[j0 + k] = (m[2 * k] + m[2 * k + 1]) / T(4);
        }
      }
    }
  });
}

template <class T>
Tensor<T> pool2d(const Tensor<T>& x, bool is_max, int kh, int kw, int sh, int sw, int ph, int pw,
                 int64_t oh, int64_t ow) {
  const int64_t nc = x.shape.d[0] * x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  Tensor<T> y = empty<T>(shape({x.shape.d[0], x.shape.d[1], oh, ow}));
  if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 && 2 * oh <= h &&
      2 * ow <= wd) {
    pool2x2_rows(x, y, is_max, oh, ow);
    return y;
  }
  parallel_for(nc * oh, ow * kh * kw, [&](int64_t r0, int64_t r1) {
    for (int64_t rr = r0; rr < r1; ++rr) {
      const int64_t i = rr / oh, a = rr % oh, i0 = a * sh - ph;
      T* acc = y.data + rr * ow;
      std::fill(acc, acc + ow, is_max ? -std::numeric_limits<T>::infinity() : T(0));
      for (int64_t di = 0; di < kh; ++di) {
        const int64_t ii = i0 + di;
        if (ii < 0 || ii >= h) continue;
        for (int64_t dj = 0; dj < kw; ++dj) {
          const int64_t off = dj - pw;
          const int64_t lo = std::min(ow, std::max<int64_t>(0, ceil_div(-off, sw)));
          const int64_t hi = std::max(lo, std::min(ow, ceil_div(wd - off, sw)));
          const T* s = x.data + (i * h + ii) * wd + off;
          if (is_max) {
#pragma omp simd
            for (int64_t b = lo; b < hi; ++b) acc[b] = maxnan(s[b * sw], acc[b]);
          } else {
#pragma omp simd
            for (int64_t b = lo; b < hi; ++b) acc[b] += s[b * sw];
          }
        }
      }
      if (!is_max) {
        const int64_t ch = std::min(i0 + kh, h + ph) - i0;
        for (int64_t b = 0; b < ow; ++b) {
          const int64_t j0 = b * sw - pw, cw = std::min(j0 + kw, wd + pw) - j0;
          acc[b] /= T(ch * cw);
        }
      }
    }
  });
  return y;
}

template <class T>
Tensor<T> adaptive_avg_pool2d(const Tensor<T>& x, int64_t oh, int64_t ow) {
  const int64_t nc = x.shape.d[0] * x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  Tensor<T> y = empty<T>(shape({x.shape.d[0], x.shape.d[1], oh, ow}));
  for (int64_t i = 0; i < nc; ++i)
    for (int64_t a = 0; a < oh; ++a)
      for (int64_t b = 0; b < ow; ++b) {
        const int64_t r0 = a * h / oh, r1 = ((a + 1) * h + oh - 1) / oh;
        const int64_t c0 = b * wd / ow, c1 = ((b + 1) * wd + ow - 1) / ow;
        double acc = 0;
        for (int64_t ii = r0; ii < r1; ++ii)
          for (int64_t jj = c0; jj < c1; ++jj) acc += x.data[(i * h + ii) * wd + jj];
        y.data[(i * oh + a) * ow + b] = T(acc / double((r1 - r0) * (c1 - c0)));
      }
  return y;
}

}  // namespace gml
