// 2-d convolution (src/conv.cpp) and the batch norm folded into its epilogue.
#pragma once
#include <cstdint>
#include <vector>

#include "gimlet/cpu/matmul.h"
#include "gimlet/cpu/tensor.h"

namespace gml {

// A batch norm (inference) after a conv, as a per-channel scale and shift applied in the
// conv's epilogue: (conv + bias - mean) * w / sqrt(var + eps) + b.
struct ChannelAffine {
  std::vector<float> mul, add;
};
ChannelAffine fold_batch_norm(const float* conv_bias, const float* w, const float* b,
                              const float* mean, const float* var, double eps, int64_t c);

// 2-d grouped convolution, out = act(conv(x, w) * mul[o] + add[o]) (bias or a folded batch
// norm). With oneDNN (-DGML_DNNL), ungrouped convs are its JIT kernels (src/conv_dnnl.cpp).
// Otherwise: im2col per image and group (rows spread over the pool), then one GEMM whose
// epilogue applies mul/add/act per block; a 1x1 stride-1 unpadded conv reads its input
// directly as the GEMM's B.
Tensor<float> conv2d(const Tensor<float>& x, const Tensor<float>& w, const float* mul,
                     const float* add, Act act, int sh, int sw, int ph, int pw, int dh, int dw,
                     int groups);

}  // namespace gml
