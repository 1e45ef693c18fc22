// 2-d convolution: im2col + GEMM with the epilogue applied per output block.
#include "gimlet/cpu/conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gimlet/cpu/nn.h"
#include "gimlet/cpu/thread_pool.h"

namespace gml {

#ifdef GML_DNNL
// oneDNN's convolution (src/conv_dnnl.cpp); false when it does not take this one.
bool dnnl_conv2d(const Tensor<float>& x, const Tensor<float>& w, const float* mul, const float* add,
                 Act act, const int* conv, int groups, Tensor<float>& y);
#endif

ChannelAffine fold_batch_norm(const float* conv_bias, const float* w, const float* b,
                              const float* mean, const float* var, double eps, int64_t c) {
  ChannelAffine f{std::vector<float>(c), std::vector<float>(c)};
  for (int64_t ch = 0; ch < c; ++ch) {
    const float scale = float(w[ch] / std::sqrt(double(var[ch]) + eps));
    f.mul[ch] = scale;
    f.add[ch] = (conv_bias ? conv_bias[ch] : 0.0f) * scale + (b[ch] - mean[ch] * scale);
  }
  return f;
}

Tensor<float> conv2d(const Tensor<float>& x, const Tensor<float>& w, const float* mul,
                     const float* add, Act act, int sh, int sw, int ph, int pw, int dh, int dw,
                     int groups) {
  const int64_t n = x.shape.d[0], c = x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  const int64_t o = w.shape.d[0], cg = w.shape.d[1], kh = w.shape.d[2], kw = w.shape.d[3];
  if (cg * groups != c) fail("conv: input channels do not match the weight");
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t ow = (wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  const int64_t og = o / groups, kk = cg * kh * kw, p = oh * ow;
  Tensor<float> y = empty<float>(shape({n, o, oh, ow}));
#ifdef GML_DNNL
  const int conv[6] = {sh, sw, ph, pw, dh, dw};
  if (dnnl_conv2d(x, w, mul, add, act, conv, groups, y)) return y;
#endif
  const bool direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  Tensor<float> cols = direct ? Tensor<float>() : empty<float>(shape({kk, p}));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x.data + (b * c + g * cg) * h * wd;
      if (!direct)
        parallel_for(kk, p, [&](int64_t r0, int64_t r1) {
          for (int64_t row = r0; row < r1; ++row) {
            const int64_t ci = row / (kh * kw), ki = (row / kw) % kh, kj = row % kw;
            const float* src = xg + ci * h * wd;
            float* dst = cols.data + row * p;
            // output columns whose input column is inside the image: [lo, hi)
            const int64_t off = kj * dw - pw;
            const int64_t lo = std::min(ow, std::max<int64_t>(0, ceil_div(-off, sw)));
            const int64_t hi = std::max(lo, std::min(ow, ceil_div(wd - off, sw)));
            for (int64_t yi = 0; yi < oh; ++yi, dst += ow) {
              const int64_t ii = yi * sh - ph + ki * dh;
              if (ii < 0 || ii >= h) {
                std::fill(dst, dst + ow, 0.0f);
                continue;
              }
              const float* s = src + ii * wd + off;
              std::fill(dst, dst + lo, 0.0f);
              if (sw == 1)
                std::memcpy(dst + lo, s + lo, size_t(hi - lo) * sizeof(float));
              else
                for (int64_t xj = lo; xj < hi; ++xj) dst[xj] = s[xj * sw];
              std::fill(dst + hi, dst + ow, 0.0f);
            }
          }
        });
      Epilogue ep{mul ? mul + g * og : nullptr, add ? add + g * og : nullptr, nullptr, act};
      sgemm(false, false, og, p, kk, w.data + g * og * kk, kk, direct ? xg : cols.data, p,
            y.data + (b * o + g * og) * p, ep);
    }
  return y;
}

}  // namespace gml
