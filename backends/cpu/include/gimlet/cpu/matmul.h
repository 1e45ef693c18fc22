// Matrix products: the GEMM wrappers over BLAS (src/matmul.cpp) and their epilogues.
#pragma once
#include <cstdint>

#include "gimlet/cpu/scalar_math.h"
#include "gimlet/cpu/tensor.h"

namespace gml {

// What a matmul or convolution applies to its result before anyone else reads it (a
// folded bias add, batch norm and/or activation), while the block is still in cache.
enum class Act { None, Relu, GeluTanh, GeluErf };

template <class T>
GML_INLINE T activate(T v, Act act) {
  switch (act) {
    case Act::Relu:
      return v < T(0) ? T(0) : v;
    case Act::GeluTanh:
      return gelu_tanh(v);
    case Act::GeluErf:
      return gelu_erf(v);
    default:
      return v;
  }
}

// The epilogue of one GEMM block: per-row scale/shift (a conv's bias or folded batch
// norm, per output channel), per-column add (a linear layer's bias), then `act`.
struct Epilogue {
  const float* row_mul = nullptr;
  const float* row_add = nullptr;
  const float* col_add = nullptr;
  Act act = Act::None;
  bool any() const { return row_mul || row_add || col_add || act != Act::None; }
};

// in place over row `i` of a block, columns [j0, j0 + n)
inline void epilogue_row(float* v, int64_t n, int64_t i, int64_t j0, const Epilogue& ep) {
  const float mul = ep.row_mul ? ep.row_mul[i] : 1.0f, add = ep.row_add ? ep.row_add[i] : 0.0f;
  if (ep.row_mul || ep.row_add) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) v[j] = v[j] * mul + add;
  }
  if (ep.col_add) {
    const float* c = ep.col_add + j0;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) v[j] += c[j];
  }
  switch (ep.act) {  // one loop per activation so each vectorizes on its own
    case Act::Relu:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) v[j] = v[j] < 0.0f ? 0.0f : v[j];
      break;
    case Act::GeluTanh:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) v[j] = gelu_tanh(v[j]);
      break;
    case Act::GeluErf:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) v[j] = gelu_erf(v[j]);
      break;
    default:
      break;
  }
}

// C[m,n] = op(A) op(B) (+ beta C) on the calling thread: one BLAS call (GEMV for m == 1).
void sgemm1(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
            const float* b, int64_t ldb, float* c, int64_t ldc, float beta = 0.0f);

// C[m,n] = op(A) op(B), then the epilogue. Large products split their columns over
// the pool, each block a single-threaded BLAS call (OpenBLAS's own threads would
// oversubscribe the cores next to ours) followed by the epilogue on that block.
void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, const Epilogue& ep = {});

// Batched a @ b with broadcast batch dims, then `bias` (over the last dim) and `act`.
// With `ta`/`tb` the stored operand holds the transpose of its last two dims (a folded
// gml.permute), which BLAS reads directly.
Tensor<float> matmul(const Tensor<float>& a, bool ta, const Tensor<float>& b, bool tb, int out_rank,
                     const float* bias = nullptr, Act act = Act::None);

}  // namespace gml
