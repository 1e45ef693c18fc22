// Decode attention: flash-decoding over a KV cache read in two pieces (the cache and the
// step's new entry, Pieces, which concat_mid also takes) split into chunks, and the
// combine of the chunks' partials; then the warp-a-row softmax of prefill's attention
// scores. Part of gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/gemv_rows.cuh"
#include "gimlet/gpu/launch.cuh"

namespace gml {

// concatenation along the middle axis of (outer, n, inner): each element finds its piece
template <class T, int N>
struct Pieces {
  const T* p[N];
  int64_t size[N];  // each piece's extent along the axis
};
template <class T, int N>
__global__ void concat_mid(int64_t outer, int64_t n, int64_t inner, Pieces<T, N> pieces,
                           T* __restrict__ y) {
  GML_FOR(e, outer * n * inner) {
    const int64_t b = e % inner, j = (e / inner) % n, a = e / (inner * n);
    int64_t start = 0;
#pragma unroll
    for (int q = 0; q < N; ++q) {
      const int64_t m = pieces.size[q];
      if (j >= start && j < start + m) y[e] = pieces.p[q][(a * m + (j - start)) * inner + b];
      start += m;
    }
  }
}

// A row j of K or V read from up to two pieces along the sequence (a KV cache and the
// step's new entry, so their concatenation is never built); each piece is
// [blocks, n_piece, width] contiguous.
template <class T>
GML_D const T* piece_row(const Pieces<T, 2>& kv, int64_t b, int64_t j, int64_t width) {
  const int64_t n0 = kv.size[0];
  return j < n0 ? kv.p[0] + (b * n0 + j) * width : kv.p[1] + (b * kv.size[1] + j - n0) * width;
}

// Flash-decoding: the keys split into chunks, one block per (batch, kv head, chunk), so
// a 512-token cache keeps ~100 SMs busy instead of one per head. Block (b, c) leaves
// unnormalised partials for its m <= 8 query rows: P_c @ V_c, the chunk's max score and
// its sum of exp(score - max), laid out [b][c][row][DV + 2]; attention_combine rescales
// and sums them. K and V come through piece_row; `bias` as in softmax_rows (rows
// numbered across blocks). The head dims D and DV are template parameters, so every
// per-thread array is a fixed size in registers (no spills) and all loads of a row are
// issued before the arithmetic that waits for them.
constexpr int ATTN_SPLIT_THREADS = 128;  // 4 warps: a chunk is at most 256 keys
constexpr int ATTN_CHUNK_MAX = 256;
// cached: k and v's first pieces (the KV cache) are the segment's inputs, which nothing in
// it writes, so their rows are loaded before sync.wait() (under PDL, while the kernels
// before still run); the step's new entry, after.
template <class T, int D, int DV, class Bias, int THREADS, class S>
GML_D void attention_decode_split_block(S& sync, int64_t b, int64_t c, int64_t chunks, int64_t m,
                                        int64_t chunk, const T* __restrict__ q, Pieces<T, 2> k,
                                        Pieces<T, 2> v, float* __restrict__ part, float scale,
                                        Bias bias, bool cached = false) {
  constexpr int WARPS = THREADS / GML_WARP;
  constexpr int V = 16 / sizeof(T), PIECES = (D + V - 1) / V;  // 16-byte loads of a K row
  constexpr int CPL = (DV + GML_WARP - 1) / GML_WARP;          // V columns per lane
  const int64_t n = k.size[0] + k.size[1], lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
  constexpr int64_t width = DV + 2;
  q += b * m * D;
  part += (b * chunks + c) * m * width;
  __shared__ float qs[8 * D];
  __shared__ float s[8][ATTN_CHUNK_MAX];
  __shared__ float partial[WARPS][8 * DV];
  sync.trigger();
  // P_c @ V_c below: warp w takes keys lo + w, lo + w + WARPS, ... KU at a time; lane l
  // owns columns l, l + 32, ... of every row. The first KU rows' loads are issued now,
  // so their latency overlaps the scores' (a 32-key chunk: all of them): the cache's
  // before the wait where `cached` (rows of the new entry after it), else all after it.
  constexpr int KU = 8;
  const int warp = threadIdx.x / GML_WARP, lane = threadIdx.x % GML_WARP;
  const int64_t n0 = k.size[0];
  float vv[KU][CPL];
  // rows of the cache only (EARLY), the rest (LATE) or all (ALL); vv is zero elsewhere
  enum Which { EARLY, LATE, ALL };
  auto load_v = [&](int64_t j, Which which) {
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      const int64_t jj = j + u * WARPS;
      const bool mine = jj < hi && (which == ALL || (which == EARLY) == (jj < n0));
      const T* vr = mine ? piece_row(v, b, jj, DV) : nullptr;
#pragma unroll
      for (int t = 0; t < CPL; ++t) {
        const int col = lane + t * GML_WARP;
        if (mine)
          vv[u][t] = col < DV ? float(load(vr + col)) : 0.f;
        else if (which != LATE)
          vv[u][t] = 0.f;
      }
    }
  };
  // a thread per key: its whole K row, 16 bytes at a time
  auto load_k = [&](int64_t j, uint4(&row)[PIECES]) {
    const T* kr = piece_row(k, b, j, D);
#pragma unroll
    for (int p = 0; p < PIECES; ++p) {
      if constexpr (D % V == 0) {
        row[p] = *reinterpret_cast<const uint4*>(kr + p * V);
      } else {
        T* t = reinterpret_cast<T*>(&row[p]);
#pragma unroll
        for (int e = 0; e < V; ++e) t[e] = p * V + e < D ? kr[p * V + e] : T{};
      }
    }
  };
  const int64_t j0 = lo + threadIdx.x;
  const bool early_k = cached && j0 < hi && j0 < n0;
  uint4 row[PIECES];
  if (early_k) load_k(j0, row);
  if (cached) load_v(lo + warp, EARLY);
  sync.wait();  // q and the step's new K/V entry come from the kernel before
  load_v(lo + warp, cached ? LATE : ALL);
  for (int64_t i = threadIdx.x; i < m * D; i += blockDim.x) qs[i] = float(load(q + i));
  __syncthreads();
  // scores: a thread per key, its whole row loaded first, q from shared memory
  for (int64_t j = j0; j < hi; j += blockDim.x) {
    if (j != j0 || !early_k) load_k(j, row);
    // rows one at a time (not unrolled: q stays in shared memory, not in registers)
#pragma unroll 1
    for (int r = 0; r < m; ++r) {
      float dot = 0.f;
#pragma unroll
      for (int p = 0; p < PIECES; ++p) {
        const T* t = reinterpret_cast<const T*>(&row[p]);
#pragma unroll
        for (int e = 0; e < V; ++e)
          if (p * V + e < D) dot += qs[r * D + p * V + e] * float(load(&t[e]));
      }
      s[r][j - lo] = dot * scale + bias(b * m + r, j);
    }
  }
  __syncthreads();
  // per row: the chunk's max, exp(score - max) in place, and their sum
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < m; ++r) {
    float mx = ninf;
    for (int64_t j = threadIdx.x; j < hi - lo; j += blockDim.x) mx = maxnan(s[r][j], mx);
    mx = block_reduce<float, true>(mx);
    float sum = 0.f;
    for (int64_t j = threadIdx.x; j < hi - lo; j += blockDim.x) {
      const float e = mx == ninf ? 0.f : expf(s[r][j] - mx);
      s[r][j] = e;
      sum += e;
    }
    sum = block_reduce<float, false>(sum);
    if (threadIdx.x == 0) {
      part[r * width + DV] = mx;
      part[r * width + DV + 1] = sum;
    }
  }
  __syncthreads();
  // P_c @ V_c (see load_v above)
  float acc[8][CPL];
#pragma unroll
  for (int r = 0; r < 8; ++r)
#pragma unroll
    for (int t = 0; t < CPL; ++t) acc[r][t] = 0.f;
  for (int64_t j = lo + warp; j < hi; j += KU * WARPS) {
    if (j != lo + warp) load_v(j, ALL);
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      const int64_t o = j + u * WARPS - lo;
      if (j + u * WARPS < hi) {
#pragma unroll
        for (int r = 0; r < 8; ++r)
          if (r < m) {
            const float pr = s[r][o];
#pragma unroll
            for (int t = 0; t < CPL; ++t) acc[r][t] += pr * vv[u][t];
          }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 8; ++r)
    if (r < m)
#pragma unroll
      for (int t = 0; t < CPL; ++t) {
        const int col = lane + t * GML_WARP;
        if (col < DV) partial[warp][r * DV + col] = acc[r][t];
      }
  __syncthreads();
  for (int64_t rc = threadIdx.x; rc < m * DV; rc += blockDim.x) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) t += partial[w][rc];
    part[(rc / DV) * width + rc % DV] = t;
  }
}

// Blocks block, block + stride, ... below `blocks` (a kernel's one; a chain's share)
template <class T, int D, int DV, class Bias, int THREADS, class S>
GML_D void attention_decode_split_body(S& sync, int64_t block, int64_t stride, int64_t blocks,
                                       int64_t m, int64_t chunk, const T* __restrict__ q,
                                       Pieces<T, 2> k, Pieces<T, 2> v, float* __restrict__ part,
                                       float scale, Bias bias) {
  const int64_t n = k.size[0] + k.size[1], chunks = n > chunk ? (n + chunk - 1) / chunk : 1;
  for (int64_t blk = block; blk < blocks; blk += stride) {
    if (blk != block) __syncthreads();  // the last block's shared memory is read out
    attention_decode_split_block<T, D, DV, Bias, THREADS>(sync, blk / chunks, blk % chunks, chunks,
                                                          m, chunk, q, k, v, part, scale, bias);
  }
}

template <class T, int D, int DV, class Bias>
__global__ void __launch_bounds__(ATTN_SPLIT_THREADS)
    attention_decode_split(int64_t m, int64_t chunk, const T* __restrict__ q, Pieces<T, 2> k,
                           Pieces<T, 2> v, float* __restrict__ part, float scale, Bias bias,
                           bool cached) {
  Pdl sync;
  attention_decode_split_block<T, D, DV, Bias, ATTN_SPLIT_THREADS>(
      sync, blockIdx.x, blockIdx.y, gridDim.y, m, chunk, q, k, v, part, scale, bias, cached);
}

// y[b, row, :] from the chunks' partials: each rescaled by exp(max_c - max), summed,
// divided by the rescaled sum (NaN where every score of the row is -inf, as softmax).
// One block per batch block: warp r finds row r's weights (lanes over chunks, loads side
// by side), then the threads sum the chunks' columns with those weights.
constexpr int ATTN_COMBINE_THREADS = 256;
constexpr int ATTN_MAX_CHUNKS = 512;  // 8 rows x 512 chunks of weights in shared memory

template <class T, class S>
GML_D void attention_combine_block(S& sync, int64_t blk, int64_t chunks, int64_t m, int64_t dv,
                                   const float* __restrict__ part, T* __restrict__ y) {
  __shared__ float w[8 * ATTN_MAX_CHUNKS];
  sync.trigger();
  sync.wait();  // the partials are the split kernel's
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t width = dv + 2, stride = m * width;
  const int warp = threadIdx.x / GML_WARP, lane = threadIdx.x % GML_WARP;
  part += blk * chunks * stride;
  y += blk * m * dv;
  for (int64_t r = warp; r < m; r += ATTN_COMBINE_THREADS / GML_WARP) {
    float mx = ninf;
    for (int64_t c = lane; c < chunks; c += GML_WARP)
      mx = maxnan(part[c * stride + r * width + dv], mx);
    mx = warp_max(mx);
    float total = 0.f;
    for (int64_t c = lane; c < chunks; c += GML_WARP) {
      const float* pc = part + c * stride + r * width;
      const float e = mx == ninf || pc[dv] == ninf ? 0.f : expf(pc[dv] - mx);
      w[r * chunks + c] = e;
      total += e * pc[dv + 1];
    }
    total = warp_sum(total);
    const float inv = total > 0.f ? 1.f / total : std::numeric_limits<float>::quiet_NaN();
    for (int64_t c = lane; c < chunks; c += GML_WARP) w[r * chunks + c] *= inv;
  }
  __syncthreads();
  for (int64_t rc = threadIdx.x; rc < m * dv; rc += blockDim.x) {
    const int64_t r = rc / dv, col = rc % dv;
    const float* pc = part + r * width + col;
    float acc = 0.f;
#pragma unroll 8
    for (int64_t c = 0; c < chunks; ++c) acc += w[r * chunks + c] * pc[c * stride];
    store(y + rc, acc);
  }
}
template <class T, class S>
GML_D void attention_combine_body(S& sync, int64_t block, int64_t stride, int64_t blocks,
                                  int64_t chunks, int64_t m, int64_t dv,
                                  const float* __restrict__ part, T* __restrict__ y) {
  for (int64_t blk = block; blk < blocks; blk += stride) {
    if (blk != block) __syncthreads();  // the last block's weights are read out
    attention_combine_block<T>(sync, blk, chunks, m, dv, part, y);
  }
}

template <class T>
__global__ void __launch_bounds__(ATTN_COMBINE_THREADS)
    attention_combine(int64_t chunks, int64_t m, int64_t dv, const float* __restrict__ part,
                      T* __restrict__ y) {
  Pdl sync;
  attention_combine_block<T>(sync, blockIdx.x, chunks, m, dv, part, y);
}
static_assert(ATTN_COMBINE_THREADS == CHAIN_THREADS && GEMV_THREADS == CHAIN_THREADS,
              "a chain runs these kernels' bodies with its own blocks");

// softmax over rows of up to 32 * ROW elements, one warp per row, the row in registers:
// one read and one write (attention scores in prefill: many short rows)
template <class T, class O, int ROW, class Bias>
__global__ void softmax_warp_rows(int64_t rows, int64_t n, const T* __restrict__ x,
                                  O* __restrict__ y, float scale, Bias bias) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / GML_WARP) + threadIdx.x / GML_WARP;
  const int lane = threadIdx.x % GML_WARP;
  if (row >= rows) return;
  const T* p = x + row * n;
  const float ninf = -std::numeric_limits<float>::infinity();
  float vals[ROW];
  float mx = ninf;
#pragma unroll
  for (int t = 0; t < ROW; ++t) {
    const int64_t j = lane + int64_t(t) * GML_WARP;
    vals[t] = j < n ? float(load(p + j)) * scale + bias(row, j) : ninf;
    mx = maxnan(vals[t], mx);
  }
  mx = warp_max(mx);
  float sum = 0.f;
#pragma unroll
  for (int t = 0; t < ROW; ++t) {
    vals[t] = mx == ninf ? 0.f : expf(vals[t] - mx);
    sum += vals[t];
  }
  sum = warp_sum(sum);
  const float inv = sum > 0.f ? 1.f / sum : std::numeric_limits<float>::quiet_NaN();
#pragma unroll
  for (int t = 0; t < ROW; ++t) {
    const int64_t j = lane + int64_t(t) * GML_WARP;
    if (j < n) store(y + row * n + j, vals[t] * inv);
  }
}

}  // namespace gml
