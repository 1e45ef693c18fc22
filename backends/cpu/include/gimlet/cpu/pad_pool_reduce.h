// Kernels of the ops inference graphs need beyond the core set: constant padding
// (gml.pad), arg-reductions (gml.argmax/argmin), variance (gml.var) and 2-d pooling with
// dilated windows or a non-default average divisor. Plain loops: these ops are rarely
// hot (a pad before a convolution, an argmax over logits), so clarity wins. The
// generated code includes this header only when it uses one of them.
#pragma once
#include <cmath>
#include <limits>
#include <type_traits>

#include "gimlet/cpu_runtime.h"

namespace gml {

// Constant padding: `low[d]` values before and `high[d]` after dim d; negative crops.
template <class T>
Tensor<T> pad(const Tensor<T>& x, std::initializer_list<int64_t> low_,
              std::initializer_list<int64_t> high_, T value) {
  const int rank = x.shape.rank;
  const int64_t* low = low_.begin();
  const int64_t* high = high_.begin();
  Shape out;
  out.rank = rank;
  for (int i = 0; i < rank; ++i) {
    out.d[i] = x.shape.d[i] + low[i] + high[i];
    if (out.d[i] < 0) fail("pad leaves a negative size in dim " + std::to_string(i));
  }
  Tensor<T> y = empty<T>(out);
  int64_t xs[MAXR];
  strides(x.shape, xs);
  const int64_t n = out.numel();
  parallel_for(n, 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      int64_t rem = f, off = 0;
      bool inside = true;
      for (int i = rank - 1; i >= 0; --i) {
        const int64_t c = rem % out.d[i] - low[i];  // the input coordinate
        rem /= out.d[i];
        inside = inside && c >= 0 && c < x.shape.d[i];
        off += c * xs[i];
      }
      y.data[f] = inside ? x.data[off] : value;
    }
  });
  return y;
}

// Index of the max (or min) along `dim`, or of the flattened input when dim < 0. The
// first index wins ties; NaN counts as the extreme (torch's rule).
template <class T>
Tensor<int64_t> argreduce(const Tensor<T>& x, bool is_max, int dim, bool keepdim) {
  const int rank = x.shape.rank;
  int64_t outer = 1, n = x.shape.numel(), inner = 1;
  Shape out;
  if (dim < 0) {
    for (int i = 0; i < rank && keepdim; ++i) out.d[out.rank++] = 1;
  } else {
    outer = 1, n = x.shape.d[dim];
    for (int i = 0; i < dim; ++i) outer *= x.shape.d[i];
    for (int i = dim + 1; i < rank; ++i) inner *= x.shape.d[i];
    for (int i = 0; i < rank; ++i)
      if (i != dim)
        out.d[out.rank++] = x.shape.d[i];
      else if (keepdim)
        out.d[out.rank++] = 1;
  }
  if (n == 0) fail("argmax/argmin of an empty dim");
  Tensor<int64_t> y = empty<int64_t>(out);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < inner; ++j) {
      const T* p = x.data + o * n * inner + j;
      int64_t best = 0;
      for (int64_t k = 1; k < n; ++k) {
        const auto v = p[k * inner], b = p[best * inner];
        if (v != v) {  // the first NaN wins for good
          if (!(b != b)) best = k;
          continue;
        }
        if (b != b) continue;
        if (is_max ? v > b : v < b) best = k;
      }
      y.data[o * inner + j] = best;
    }
  return y;
}

// Variance over `dims` (all when empty): sum((x - mean)^2) / (N - correction), in double.
template <class TI, class TO>
Tensor<TO> var(const Tensor<TI>& x, std::initializer_list<int> dims, bool keepdim,
               double correction) {
  bool red[MAXR] = {false};
  for (int d : dims) red[d] = true;
  if (dims.size() == 0)
    for (int i = 0; i < x.shape.rank; ++i) red[i] = true;
  Shape out, kept;
  int64_t xs[MAXR], ks[MAXR];
  strides(x.shape, xs);
  int64_t rcount = 1;
  for (int i = 0; i < x.shape.rank; ++i) {
    if (red[i]) {
      rcount *= x.shape.d[i];
      if (keepdim) out.d[out.rank++] = 1;
    } else {
      out.d[out.rank++] = x.shape.d[i];
      kept.d[kept.rank] = x.shape.d[i];
      ks[kept.rank++] = xs[i];
    }
  }
  std::vector<int64_t> roff(rcount);
  for (int64_t r = 0; r < rcount; ++r) {
    int64_t rem = r, off = 0;
    for (int i = x.shape.rank - 1; i >= 0; --i)
      if (red[i]) off += (rem % x.shape.d[i]) * xs[i], rem /= x.shape.d[i];
    roff[r] = off;
  }
  Tensor<TO> y = empty<TO>(out);
  const double denom = std::max(double(rcount) - correction, 0.0);
  parallel_for(kept.numel(), rcount, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      int64_t base = 0, rem = o;
      for (int i = kept.rank - 1; i >= 0; --i) base += (rem % kept.d[i]) * ks[i], rem /= kept.d[i];
      const TI* p = x.data + base;
      double mean = 0, ss = 0;
      for (int64_t r = 0; r < rcount; ++r) mean += double(p[roff[r]]);
      mean /= double(rcount);
      for (int64_t r = 0; r < rcount; ++r) {
        const double d = double(p[roff[r]]) - mean;
        ss += d * d;
      }
      y.data[o] = TO(ss / denom);
    }
  });
  return y;
}

// 2-d pooling in full generality: dilated max windows; an average divided by
// `divisor` (any but 0: a divisor_override), or by the window clipped to the padded input
// (count_include_pad) or to the input itself. `pool2d` in nn.h is the fast path for the common
// case.
template <class T>
Tensor<T> pool2d_general(const Tensor<T>& x, bool is_max, int kh, int kw, int sh, int sw, int ph,
                         int pw, int dh, int dw, bool count_include_pad, int64_t divisor,
                         int64_t oh, int64_t ow) {
  const int64_t nc = x.shape.d[0] * x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  Tensor<T> y = empty<T>(shape({x.shape.d[0], x.shape.d[1], oh, ow}));
  parallel_for(nc * oh, ow * kh * kw, [&](int64_t r0, int64_t r1) {
    for (int64_t rr = r0; rr < r1; ++rr) {
      const int64_t i = rr / oh, a = rr % oh, i0 = a * sh - ph;
      for (int64_t b = 0; b < ow; ++b) {
        const int64_t j0 = b * sw - pw;
        T acc = is_max ? -std::numeric_limits<T>::infinity() : T(0);
        for (int64_t di = 0; di < kh; ++di) {
          const int64_t ii = i0 + di * dh;
          if (ii < 0 || ii >= h) continue;
          for (int64_t dj = 0; dj < kw; ++dj) {
            const int64_t jj = j0 + dj * dw;
            if (jj < 0 || jj >= wd) continue;
            const T v = x.data[(i * h + ii) * wd + jj];
            acc = is_max ? maxnan(v, acc) : acc + v;
          }
        }
        if (!is_max) {
          int64_t div = divisor;
          if (div == 0) {  // no divisor_override (which is never 0, maybe < 0)
            const int64_t i1 = std::min(i0 + kh, h + ph), j1 = std::min(j0 + kw, wd + pw);
            div = count_include_pad ? (i1 - i0) * (j1 - j0)
                                    : (std::min(i1, h) - std::max<int64_t>(i0, 0)) *
                                          (std::min(j1, wd) - std::max<int64_t>(j0, 0));
          }
          acc /= T(div);
        }
        y.data[rr * ow + b] = acc;
      }
    }
  });
  return y;
}

}  // namespace gml
