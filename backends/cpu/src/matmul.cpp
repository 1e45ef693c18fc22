// GEMM over OpenBLAS (the scipy-openblas64 package: ILP64, symbols `scipy_cblas_*64_`),
// split over the runtime's pool, with the epilogues of matmul.h.
#include "gimlet/cpu/matmul.h"

#include <algorithm>

#include "gimlet/cpu/thread_pool.h"

#ifndef GML_NO_BLAS
#include <cblas.h>
#endif

namespace gml {

#ifndef GML_NO_BLAS
// Every BLAS call runs on one thread: the pool splits the work, and OpenBLAS's own threads
// would oversubscribe the cores next to ours. This library's OpenBLAS is the package's own
// copy (numpy and scipy load theirs), so its global thread count is ours to set. (The
// per-thread `openblas_set_num_threads_local` is not exported by scipy-openblas64.)
static void blas_single_threaded() {
  static const bool once = (scipy_openblas_set_num_threads64_(1), true);
  (void)once;
}
#endif

void sgemm1(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
            const float* b, int64_t ldb, float* c, int64_t ldc, float beta) {
#ifndef GML_NO_BLAS
  blas_single_threaded();
  if (m == 1) {  // a matrix-vector product: GEMM would pack (copy) all of B first
    const int64_t incx = ta ? lda : 1;
    if (tb)
      scipy_cblas_sgemv64_(CblasRowMajor, CblasNoTrans, n, k, 1.0f, b, ldb, a, incx, beta, c, 1);
    else
      scipy_cblas_sgemv64_(CblasRowMajor, CblasTrans, k, n, 1.0f, b, ldb, a, incx, beta, c, 1);
    return;
  }
  scipy_cblas_sgemm64_(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                       tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
#else
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float acc = beta ? c[i * ldc + j] : 0.0f;
      for (int64_t p = 0; p < k; ++p)
        acc += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
      c[i * ldc + j] = acc;
    }
#endif
}

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, const Epilogue& ep) {
  auto cols = [&](int64_t j0, int64_t j1) {
    sgemm1(ta, tb, m, j1 - j0, k, a, lda, tb ? b + j0 * ldb : b + j0, ldb, c + j0, n);
    if (ep.any())
      for (int64_t i = 0; i < m; ++i) epilogue_row(c + i * n + j0, j1 - j0, i, j0, ep);
  };
  // column blocks of at least 64 (a multiple of 16 keeps BLAS's packed panels whole);
  // each block re-packs `a` (measured: 4 blocks of 128x256x1024 cost 3% more than 2), so
  // only wide products get more blocks than threads, to balance a busy core's share
  const int nt = num_threads();
  const int64_t blocks = std::min<int64_t>(n >= 1024 ? 2 * nt : nt, n / 64);
  // a matrix-vector product (decode) is bound by reading B, not by FLOPs: split it as
  // soon as B is a few hundred KiB, where a second core's bandwidth pays for the handoff
  const int64_t work = m == 1 ? 4 * n * k : m * n * k;
  if (nt <= 1 || blocks < 2 || work < (int64_t(1) << 18)) {
    cols(0, n);
    return;
  }
  const int64_t step = ((n + blocks - 1) / blocks + 15) / 16 * 16;
  ThreadPool::get().run((n + step - 1) / step,
                        [&](int64_t t) { cols(t * step, std::min(n, (t + 1) * step)); });
}

Tensor<float> matmul(const Tensor<float>& a, bool ta, const Tensor<float>& b, bool tb, int out_rank,
                     const float* bias, Act act) {
  const Shape &as = a.shape, &bs = b.shape;
  const int64_t m = ta ? as.d[as.rank - 1] : as.d[as.rank - 2];
  const int64_t k = ta ? as.d[as.rank - 2] : as.d[as.rank - 1];
  const int64_t kb = tb ? bs.d[bs.rank - 1] : bs.d[bs.rank - 2];
  const int64_t n = tb ? bs.d[bs.rank - 2] : bs.d[bs.rank - 1];
  if (k != kb) fail("matmul " + str(as) + " @ " + str(bs) + ": contraction dims differ");
  Shape abatch, bbatch;
  abatch.rank = as.rank - 2;
  bbatch.rank = bs.rank - 2;
  for (int i = 0; i < abatch.rank; ++i) abatch.d[i] = as.d[i];
  for (int i = 0; i < bbatch.rank; ++i) bbatch.d[i] = bs.d[i];
  Shape batch = broadcast(out_rank - 2, {abatch, bbatch});
  Shape out = batch;
  out.rank = out_rank;
  out.d[out_rank - 2] = m;
  out.d[out_rank - 1] = n;
  Tensor<float> y = empty<float>(out);
  const int64_t lda = as.d[as.rank - 1], ldb = bs.d[bs.rank - 1];
  const int64_t nbatch = batch.numel();
  if (bbatch.numel() == 1 && !ta && abatch.numel() == nbatch) {
    // one GEMM: the batch of `a` folds into its rows
    sgemm(false, tb, nbatch * m, n, k, a.data, lda, b.data, ldb, y.data,
          {nullptr, nullptr, bias, act});
    return y;
  }
  int64_t sa[MAXR], sb[MAXR];
  bstrides(abatch, batch, sa);
  bstrides(bbatch, batch, sb);
  auto one = [&](int64_t i) {
    int64_t oa = 0, ob = 0, rem = i;
    for (int d = batch.rank - 1; d >= 0; --d) {
      const int64_t c = rem % batch.d[d];
      rem /= batch.d[d];
      oa += c * sa[d];
      ob += c * sb[d];
    }
    sgemm(ta, tb, m, n, k, a.data + oa * m * k, lda, b.data + ob * k * n, ldb, y.data + i * m * n,
          {nullptr, nullptr, bias, act});
  };
  // many small products (attention heads): one product per task; else split each one
  if (nbatch > 1 && m * n * k < (int64_t(1) << 18)) {
    if (nbatch * m * n * k >= 8 * PAR_MIN)
      ThreadPool::get().run(nbatch, one);
    else
      for (int64_t i = 0; i < nbatch; ++i) one(i);
  } else {
    for (int64_t i = 0; i < nbatch; ++i) one(i);
  }
  return y;
}

}  // namespace gml
