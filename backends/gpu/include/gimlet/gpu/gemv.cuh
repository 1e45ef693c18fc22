// Decode's GEMVs, part 2: the matrix-vector products over gemv_rows.cuh's rows, a kernel
// of their own (gemv_nt, under PDL) or a chain's phase (gemv_nt_columns). Part of
// gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/gemv_rows.cuh"

namespace gml {

// acc[r] += the 16 bytes of weights in wv . x[r, j .. j + 16 / sizeof(T)); `early`: none,
// or what rows.early() loaded before the wait and the lane's chunk u of it
template <class T, int M, class X, class... E>
GML_D void gemv_chunk(float (&acc)[M], const uint4& wv, const X& rows, int64_t k, int64_t j,
                      const E&... early) {
  constexpr int V = 16 / sizeof(T);
  const T* wt = reinterpret_cast<const T*>(&wv);
#pragma unroll
  for (int r = 0; r < M; ++r) {
    float xv[V];
    rows.chunk(r, k, j, xv, early...);
#pragma unroll
    for (int e = 0; e < V; ++e) acc[r] += float(load(&wt[e])) * xv[e];
  }
}

// acc[r] += column wr . x[r, :] a lane's elements at a time (k not a multiple of 16 bytes)
template <class T, int M, class X>
GML_D void gemv_column_unaligned(float (&acc)[M], const T* wr, const X& rows, int64_t k) {
  for (int64_t j = threadIdx.x % GML_WARP; j < k; j += GML_WARP) {
    const float wv = float(load(wr + j));
#pragma unroll
    for (int r = 0; r < M; ++r) acc[r] += wv * rows.at(r, k, j);
  }
}

// A chain's GEMV: the warps of blocks block, block + stride, ... walk columns
// b * GEMV_COLS + warp, several each, their 16-byte loads running on from one column to
// the next, U in flight (a warp a column at a time would wait out the memory latency once
// a column, and the chain's grid has fewer warps than the kernel's).
template <class T, int M, class S, class X, class O, class F>
GML_D void gemv_nt_columns(S& sync, int64_t block, int64_t stride, int64_t n, int64_t k, X rows,
                           const T* __restrict__ w, O&& operands, F&& epilogue) {
  static_assert(!X::STATEFUL, "a chain's warp walks several columns: no per-warp state");
  const int lane = threadIdx.x % GML_WARP;
  const int64_t first = block * GEMV_COLS + threadIdx.x / GML_WARP, step = stride * GEMV_COLS;
  const int64_t cols = first < n ? (n - 1 - first) / step + 1 : 0;  // this warp's columns
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  auto finish = [&](int64_t col) {
#pragma unroll
    for (int r = 0; r < M; ++r) acc[r] = warp_sum(acc[r]);
    if (lane == 0) epilogue(col, acc, operands(col));
#pragma unroll
    for (int r = 0; r < M; ++r) acc[r] = 0.f;
  };
  constexpr int V = 16 / sizeof(T);
  if (k % V != 0) {
    sync.wait();
    rows.template prepare<M>(k);
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t col = first + c * step;
      gemv_column_unaligned<T>(acc, w + col * k, rows, k);
      finish(col);
    }
    return;
  }
  // the warp's chunks of STEP elements in order, `per` a column: the loads (f*) run U
  // chunks ahead of the arithmetic (c*), each keeping its column and offset as it goes
  constexpr int U = 8;
  constexpr int64_t STEP = int64_t(GML_WARP) * V;
  const int64_t per = (k + STEP - 1) / STEP, chunks = cols * per;
  uint4 wv[U];
  int64_t fq = 0, fcol = first, fj = int64_t(lane) * V;
  auto fetch = [&]() {
#pragma unroll
    for (int u = 0; u < U; ++u, ++fq) {
      if (fq >= chunks) continue;
      if (fj < k) wv[u] = *reinterpret_cast<const uint4*>(w + fcol * k + fj);
      fj += STEP;
      if (fj >= per * STEP) fj -= per * STEP, fcol += step;
    }
  };
  fetch();
  sync.wait();                  // x (and the epilogue's operands) are the previous phases' results
  rows.template prepare<M>(k);  // every lane (shuffles), while the first batch is in flight
  int64_t cq = 0, ccol = first, cj = int64_t(lane) * V;
  while (cq < chunks) {
#pragma unroll
    for (int u = 0; u < U; ++u, ++cq) {
      if (cq >= chunks) continue;
      if (cj < k) gemv_chunk<T>(acc, wv[u], rows, k, cj);
      cj += STEP;
      if (cj >= per * STEP) {  // the column's last chunk (the same step in every lane)
        finish(ccol);
        cj -= per * STEP, ccol += step;
      }
    }
    fetch();
  }
}

// `epilogue(col, acc, operands(col))` in lane 0 of the warp of column col, acc[r] the sum
// for row r < M, operands(col) what the epilogue loads (bias, residual). A kernel of its
// own (block = blockIdx.x): a warp a column. Its U 16-byte weight loads a lane are in
// flight before any arithmetic (a loop of one load each waits out the memory latency U
// times); the first batch is issued before sync.wait() (under PDL, before the previous
// kernel has finished) and before the rows' layer norm statistics, which then overlap
// it. With EARLY the epilogue's operands are loaded right after the wait, beside x,
// rather than after the sum; with EARLY_NORM the norm's weight and bias of the first
// chunks (rows.early) before the wait, rather than as x is normalized (each one memory
// latency fewer on the kernel's critical path). Codegen makes U a column's loads where k
// is static (up to 16), and S > 1 where a warp a column would leave SMs idle: S warps then
// share a column (GPT-2's fc2, 768 columns of k = 3072: 4 warps of 3 loads a lane). In a
// chain (Sync::PERSISTENT), gemv_nt_columns.
template <class T, int M, int U = 8, bool EARLY = true, bool EARLY_NORM = EARLY, int S = 1,
          class Sync, class X, class O, class F>
GML_D void gemv_nt(Sync& sync, int64_t block, int64_t stride, int64_t n, int64_t k, X rows,
                   const T* __restrict__ w, O&& operands, F&& epilogue) {
  sync.trigger();  // the next kernel may start: it only streams its own weight until we end
  if constexpr (Sync::PERSISTENT) {
    gemv_nt_columns<T, M>(sync, block, stride, n, k, rows, w, operands, epilogue);
  } else {
    // S warps a column, split along k: warp p of a column takes its 16-byte chunks p,
    // p + S, ... as lanes 32p.. of one warp of 32S lanes would; their sums meet in shared
    // memory. GEMV_COLS / S columns a block.
    static_assert(GEMV_COLS % S == 0 && M <= 4, "S divides a block's warps; at most 4 rows");
    static_assert(S == 1 || !X::STATEFUL, "rows that accumulate per warp take a warp a column");
    const int warp = threadIdx.x / GML_WARP, part = warp % S, lane = threadIdx.x % GML_WARP;
    const int64_t col = block * (GEMV_COLS / S) + warp / S;
    const bool live = col < n;
    float acc[M];
#pragma unroll
    for (int r = 0; r < M; ++r) acc[r] = 0.f;
    if (S == 1 && !live) {
      sync.wait();
      return;
    }
    const T* wr = w + col * k;
    constexpr int V = 16 / sizeof(T);
    decltype(operands(col)) ops{};
    typename X::Column cst{};  // what the rows need a column (a folded norm's c1, c2)
    if (k % V == 0) {
      constexpr int64_t STEP = int64_t(GML_WARP) * V * S;
      uint4 wv[U];
      int64_t j0 = (int64_t(part) * GML_WARP + lane) * V;
      auto fetch = [&]() {
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (live && j0 + u * STEP < k)
            wv[u] = *reinterpret_cast<const uint4*>(wr + j0 + u * STEP);
      };
      fetch();
      if (live) cst = rows.column(col);
      // the rows' own weights (a layer norm's) for the first E chunks, in registers
      constexpr int E = U < 4 ? U : 4;
      typename X::template Early<E> pre{};
      if constexpr (EARLY_NORM) pre = rows.template early<E>(k, j0, STEP);
      sync.wait();  // x (and the epilogue's operands) are the previous kernels' results
      if (EARLY && live && part == 0 && lane == 0) ops = operands(col);
      rows.template prepare<M>(k);  // every lane (shuffles), while the first batch is in flight
      // the first batch (U a column's loads where k is static: the only one), then the rest
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (!live || j0 + u * STEP >= k) continue;
        if (EARLY_NORM && u < E)
          gemv_chunk<T>(acc, wv[u], rows, k, j0 + u * STEP, pre, u < E ? u : 0);
        else
          gemv_chunk<T>(acc, wv[u], rows, k, j0 + u * STEP);
      }
      for (j0 += U * STEP; j0 < k; j0 += U * STEP) {
        fetch();
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (live && j0 + u * STEP < k) gemv_chunk<T>(acc, wv[u], rows, k, j0 + u * STEP);
      }
    } else {
      if (live) cst = rows.column(col);
      sync.wait();
      rows.template prepare<M>(k);
      if (live && part == 0) gemv_column_unaligned<T>(acc, wr, rows, k);
    }
#pragma unroll
    for (int r = 0; r < M; ++r) acc[r] = warp_sum(acc[r]);
    rows.finish(acc, cst, k);
    if constexpr (S > 1) {
      __shared__ float sums[GEMV_COLS][4];
      if (lane == 0)
#pragma unroll
        for (int r = 0; r < M; ++r) sums[warp][r] = acc[r];
      __syncthreads();
      if (!live || part != 0) return;
#pragma unroll
      for (int r = 0; r < M; ++r)
#pragma unroll
        for (int p = 1; p < S; ++p) acc[r] += sums[warp + p][r];
    }
    if (lane == 0) epilogue(col, acc, EARLY && k % V == 0 ? ops : operands(col));
  }
}

}  // namespace gml
