// Scaled dot-product attention.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "gimlet/cpu/matmul.h"
#include "gimlet/cpu/nn.h"
#include "gimlet/cpu/tensor.h"
#include "gimlet/cpu/thread_pool.h"

namespace gml {

// softmax(q k^T * scale + mask) v per (batch..., head), in blocks of query rows: one
// GEMM for the block's scores, a vectorized softmax over each row (masking on the way),
// one GEMM for the block's output. Blocks are the parallel tasks, so the score matrix
// never exists beyond one block per thread. With `causal` (top-left aligned, as torch)
// a block reads only the keys up to its last row. k/v may have fewer heads
// (grouped-query); a fully masked row yields zeros (torch's "safe" softmax). `mask` is
// bool (true = attend) or additive.
template <class M>
Tensor<float> sdpa(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v,
                   const Tensor<M>* mask, bool causal, double scale_or_nan) {
  const int r = q.shape.rank;
  const int64_t lq = q.shape.d[r - 2], e = q.shape.d[r - 1];
  const int64_t lk = k.shape.d[r - 2], ev = v.shape.d[r - 1];
  const float scale = std::isnan(scale_or_nan) ? 1.0f / std::sqrt(float(e)) : float(scale_or_nan);
  constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
  Shape out = q.shape;
  out.d[r - 1] = ev;
  Tensor<float> y = empty<float>(out);
  Shape batch;
  batch.rank = r - 2;
  int64_t ks[MAXR], vs[MAXR], qk[MAXR];
  for (int i = 0; i < r - 2; ++i) batch.d[i] = q.shape.d[i];
  strides(k.shape, ks);
  strides(v.shape, vs);
  for (int i = 0; i < r - 2; ++i) qk[i] = k.shape.d[i] ? q.shape.d[i] / k.shape.d[i] : 1;
  Shape scores = batch;
  scores.rank = r;
  scores.d[r - 2] = lq;
  scores.d[r - 1] = lk;
  int64_t ms[MAXR] = {0};
  if (mask) bstrides(mask->shape, scores, ms);
  const int64_t nb = batch.numel();
  const int64_t rb = std::min<int64_t>(lq, 32);  // query rows per block
  const int64_t nblk = lq ? (lq + rb - 1) / rb : 0;
  const bool par = nb * lq * lk * (e + ev) >= 4 * PAR_MIN;
  auto block = [&](int64_t task) {
    thread_local std::vector<float> s;  // this thread's scores for one block
    s.resize(size_t(rb * lk));
    {
      const int64_t bi = task / nblk, i0 = (task % nblk) * rb, i1 = std::min(lq, i0 + rb);
      int64_t ko = 0, vo = 0, mo = 0, rem = bi;
      for (int d = r - 3; d >= 0; --d) {
        const int64_t c = rem % batch.d[d];
        rem /= batch.d[d];
        ko += (c / qk[d]) * ks[d];
        vo += (c / qk[d]) * vs[d];
        mo += c * ms[d];
      }
      const int64_t m = i1 - i0, nk = causal ? std::min(lk, i1) : lk;  // keys this block sees
      float* yp = y.data + (bi * lq + i0) * ev;
      if (nk == 0) {
        std::fill(yp, yp + m * ev, 0.0f);
        return;
      }
      // s[m, nk] = q[i0:i1] k[:nk]^T
      sgemm1(false, true, m, nk, e, q.data + (bi * lq + i0) * e, e, k.data + ko, e, s.data(), nk);
      for (int64_t i = i0; i < i1; ++i) {
        float* row = s.data() + (i - i0) * nk;
        const int64_t seen = causal ? std::min(nk, i + 1) : nk;
        if (mask) {
          const M* mp = mask->data + mo + i * ms[r - 2];
          const int64_t mj = ms[r - 1];
          for (int64_t j = 0; j < seen; ++j) {
            if constexpr (std::is_same_v<M, bool>) {
              row[j] = mp[j * mj] ? row[j] * scale : NEG_INF;
            } else {
              row[j] = row[j] * scale + float(mp[j * mj]);
            }
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < seen; ++j) row[j] *= scale;
        }
        float top = NEG_INF;
        for (int64_t j = 0; j < seen; ++j) top = maxnan(row[j], top);
        if (std::isinf(top) && top < 0) {
          std::fill(row, row + nk, 0.0f);
          continue;
        }
        softmax_row(row, row, seen, 1, false);
        std::fill(row + seen, row + nk, 0.0f);
      }
      // y[i0:i1] = p[m, nk] v[:nk]
      sgemm1(false, false, m, ev, nk, s.data(), nk, v.data + vo, ev, yp, ev);
    }
  };
  if (par) {
    ThreadPool::get().run(nb * nblk, block);
  } else {
    for (int64_t task = 0; task < nb * nblk; ++task) block(task);
  }
  return y;
}

}  // namespace gml
