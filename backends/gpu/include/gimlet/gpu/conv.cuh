// Convolution, batch norm and pooling kernels (lowered by backends/gpu/conv.py).
// Included at the end of gml_gpu.cuh; HIP-compatible like the rest of the header: no
// vendor names here, only the portability block's macros and the gml:: helpers.
//
// Layout NCHW (a 1-d op is lowered as 2-d with H = 1). Each kernel reads its geometry
// from one `Window2d` filled from the parameter table, so it is shape-agnostic.
#pragma once

#include "gimlet/gpu/gml_gpu.cuh"

namespace gml {

// The geometry of a 2-d window op: input n x c x h x w, output spatial oh x ow, the
// window kh x kw moved by (sh, sw), input padded by (ph, pw), taps dilated by (dh, dw).
struct Window2d {
  int64_t n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

inline Window2d window_from(const int64_t* p) {
  return Window2d{p[0], p[1], p[2], p[3],  p[4],  p[5],  p[6],
                  p[7], p[8], p[9], p[10], p[11], p[12], p[13]};
}

// im2col for an implicit GEMM: col[r][b * oh*ow + q] with r = ch * kh*kw + i * kw + j
// (ch the input channel, so group g's rows are the contiguous block g*cg*kh*kw..) and
// q = oy * ow + ox; zero where a tap reads padding. Consecutive threads write
// consecutive q, so writes coalesce and stride-1 reads do too.
template <class T>
__global__ void im2col(Window2d g, const T* __restrict__ x, T* __restrict__ col) {
  const int64_t taps = g.kh * g.kw, ohw = g.oh * g.ow, cols = g.n * ohw;
  GML_FOR(e, g.c * taps * cols) {
    const int64_t q = e % cols, r = e / cols;
    const int64_t ch = r / taps, t = r % taps;
    const int64_t b = q / ohw, p = q % ohw;
    const int64_t iy = (p / g.ow) * g.sh - g.ph + (t / g.kw) * g.dh;
    const int64_t ix = (p % g.ow) * g.sw - g.pw + (t % g.kw) * g.dw;
    const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
    col[e] = inside ? x[((b * g.c + ch) * g.h + iy) * g.w + ix] : T{};
  }
}

// y[b][ch][p] = acc[ch][b][p] + bias[ch]: the GEMM's channel-major f32 result into NCHW,
// rounded once to T (torch's convolution rounds after the bias, not before). `acc` may
// be `y` itself (f32 with n == 1: then the layouts agree and this adds the bias in place),
// so neither pointer is __restrict__.
template <class T, class B>
__global__ void conv_out(int64_t n, int64_t c, int64_t hw, const float* acc, const B* bias, T* y) {
  GML_FOR(e, n * c * hw) {
    const int64_t p = e % hw, ch = (e / hw) % c, b = e / (c * hw);
    float v = acc[(ch * n + b) * hw + p];
    if (bias) v += float(load(bias + ch));
    store(y + e, v);
  }
}

// Inference batch norm over dim 1 of a contiguous (n, c, inner) view:
// y = (x - mean) / sqrt(var + eps) * weight + bias, in the order the oracle computes it.
template <class T, class S>
__global__ void batch_norm(int64_t total, int64_t c, int64_t inner, const T* __restrict__ x,
                           const S* __restrict__ w, const S* __restrict__ b,
                           const S* __restrict__ mean, const S* __restrict__ var, double eps,
                           T* __restrict__ y) {
  using V = std::conditional_t<std::is_same_v<T, double>, double, float>;
  GML_FOR(i, total) {
    const int64_t ch = (i / inner) % c;
    const V d = V(load(x + i)) - V(load(mean + ch));
    store(y + i, d / std::sqrt(V(load(var + ch)) + V(eps)) * V(load(w + ch)) + V(load(b + ch)));
  }
}

// max pooling's padding is gml::lowest<V>() (reductions.cuh): -inf, or the integer minimum

// Max pooling, one thread per output; padding never wins, a NaN in the window does.
template <class T>
__global__ void max_pool2d(Window2d g, const T* __restrict__ x, T* __restrict__ y) {
  using V = decltype(load(x));
  GML_FOR(e, g.n * g.c * g.oh * g.ow) {
    const int64_t ox = e % g.ow, oy = (e / g.ow) % g.oh, plane = e / (g.ow * g.oh);
    const T* p = x + plane * g.h * g.w;
    V m = lowest<V>();
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t iy = oy * g.sh - g.ph + i * g.dh;
      if (iy < 0 || iy >= g.h) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ix = ox * g.sw - g.pw + j * g.dw;
        if (ix >= 0 && ix < g.w) m = maxnan(V(load(p + iy * g.w + ix)), m);
      }
    }
    store(y + e, m);
  }
}

// Average pooling, one thread per output. The divisor is `divisor` when positive
// (divisor_override), else torch's: the window clipped to the padded input (a ceil_mode
// window may overhang it), or clipped to the input alone when padding does not count.
template <class T>
__global__ void avg_pool2d(Window2d g, bool count_include_pad, int64_t divisor,
                           const T* __restrict__ x, T* __restrict__ y) {
  using A = std::conditional_t<std::is_same_v<T, double> || std::is_integral_v<T>, double, float>;
  GML_FOR(e, g.n * g.c * g.oh * g.ow) {
    const int64_t ox = e % g.ow, oy = (e / g.ow) % g.oh, plane = e / (g.ow * g.oh);
    const T* p = x + plane * g.h * g.w;
    const int64_t y0 = oy * g.sh - g.ph, x0 = ox * g.sw - g.pw;
    const int64_t y1 = y0 + g.kh < g.h + g.ph ? y0 + g.kh : g.h + g.ph;
    const int64_t x1 = x0 + g.kw < g.w + g.pw ? x0 + g.kw : g.w + g.pw;
    const int64_t padded = (y1 - y0) * (x1 - x0);
    const int64_t ya = y0 > 0 ? y0 : 0, yb = y1 < g.h ? y1 : g.h;
    const int64_t xa = x0 > 0 ? x0 : 0, xb = x1 < g.w ? x1 : g.w;
    A s = A(0);
    for (int64_t iy = ya; iy < yb; ++iy)
      for (int64_t ix = xa; ix < xb; ++ix) s += A(load(p + iy * g.w + ix));
    const int64_t inside = (yb - ya) * (xb - xa);
    const int64_t d = divisor > 0 ? divisor : (count_include_pad ? padded : inside);
    store(y + e, s / A(d));
  }
}

// Adaptive average pooling: output (oy, ox) averages rows [floor(oy*h/oh),
// ceil((oy+1)*h/oh)) and the same bins of columns.
template <class T>
__global__ void adaptive_avg_pool2d(Window2d g, const T* __restrict__ x, T* __restrict__ y) {
  using A = std::conditional_t<std::is_same_v<T, double> || std::is_integral_v<T>, double, float>;
  GML_FOR(e, g.n * g.c * g.oh * g.ow) {
    const int64_t ox = e % g.ow, oy = (e / g.ow) % g.oh, plane = e / (g.ow * g.oh);
    const T* p = x + plane * g.h * g.w;
    const int64_t ya = oy * g.h / g.oh, yb = ((oy + 1) * g.h + g.oh - 1) / g.oh;
    const int64_t xa = ox * g.w / g.ow, xb = ((ox + 1) * g.w + g.ow - 1) / g.ow;
    A s = A(0);
    for (int64_t iy = ya; iy < yb; ++iy)
      for (int64_t ix = xa; ix < xb; ++ix) s += A(load(p + iy * g.w + ix));
    store(y + e, s / A((yb - ya) * (xb - xa)));
  }
}

}  // namespace gml
