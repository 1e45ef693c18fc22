// Prefill attention in one kernel: flash attention 2 (a tiled online softmax) on tensor
// cores, lowered by backends/gpu/lower_attention.py's sdpa under GIMLET_GPU_FLASH=1. Included at
// the end of gml_gpu.cuh; HIP-compatible like the rest of the header: the tensor-core
// fragments are reached only through gml::tc below (nvcuda::wmma on CUDA, rocWMMA on ROCm).
#pragma once

#include "gimlet/gpu/gml_gpu.cuh"

#if defined(GML_HIP) && !__has_include(<rocwmma/rocwmma.hpp>)
// ROCm without rocWMMA (5.2, Debian's): the rest of the header still compiles; a segment
// that launches this kernel stops at its static_assert below (GIMLET_GPU_FLASH=0 lowers
// attention to BLAS GEMMs instead)
#define GML_NO_TENSOR_CORES 1
#define GML_SYNCWARP() __builtin_amdgcn_wave_barrier()
#elif defined(GML_HIP)
// rocWMMA (ROCm 5.4+) mirrors nvcuda::wmma's API; gfx90a/gfx94x/gfx11 have 16x16x16
// f16/bf16 products with f32 accumulation.
#include <rocwmma/rocwmma.hpp>
// a wavefront runs in lockstep: the barrier only keeps the compiler from moving shared
// memory accesses across it
#define GML_SYNCWARP() __builtin_amdgcn_wave_barrier()
#else
#include <mma.h>
#define GML_SYNCWARP() __syncwarp()
#endif

namespace gml {
// Where batch b of an attention operand starts (elements): b = o * heads + h walks the
// outer batch dims (o) and the heads (h), each with its stride. Two strides, not one, let
// the kernel read q/k/v in place from a fused qkv projection at any batch: [B, T, 3, H, D]
// read as [B, H, T, D] has heads d apart and batches T * 3 * H * d apart, which no one
// stride walks once B > 1 (and writes its output [B, H, T, Dv] as [B, T, H, Dv]).
struct AttnBatch {
  int64_t head, outer;
  GML_HD int64_t at(int64_t b, int64_t heads) const { return b % heads * head + b / heads * outer; }
};
}  // namespace gml

#ifdef GML_NO_TENSOR_CORES
namespace gml {
constexpr int ATTN_PREFILL_ROWS = 64;
constexpr int ATTN_PREFILL_THREADS = ATTN_PREFILL_ROWS / 16 * GML_WARP;
template <class T, int D, int DV, class Bias>
__global__ void attention_prefill(int64_t, int64_t, int64_t, const T*, int64_t, AttnBatch, const T*,
                                  int64_t, AttnBatch, const T*, int64_t, AttnBatch, T*, int64_t,
                                  AttnBatch, float, Bias, int64_t, float*) {
  static_assert(sizeof(T) == 0,
                "flash attention on ROCm needs rocWMMA (ROCm 5.4+); GIMLET_GPU_FLASH=0 avoids it");
}
}  // namespace gml
#else
namespace gml {

// ---------------------------------------------------------------- tensor-core fragments
// 16x16x16 products of 16-bit matrices accumulated in f32, one warp each. A fragment's
// element-to-lane mapping is the vendor's and the architecture's (unspecified): kernels
// only load, multiply and store fragments, and find which row an accumulator element
// belongs to by loading a table of row numbers into an accumulator (all accumulators of
// one type share the mapping), never from a layout assumed here.
namespace tc {
#ifdef GML_HIP
namespace wm = rocwmma;
template <class T>
struct elem;
template <>
struct elem<f16> {
  using type = rocwmma::float16_t;
};
template <>
struct elem<bf16> {
  using type = rocwmma::bfloat16_t;
};
#else
namespace wm = nvcuda::wmma;
template <class T>
struct elem;
template <>
struct elem<f16> {
  using type = __half;
};
template <>
struct elem<bf16> {
  using type = __nv_bfloat16;  // sm_80 and newer
};
#endif
// A (16 x 16 rows of the left operand, row-major), B (row-major: k x n as stored),
// Bt (B stored n x k, as K's rows are: the right operand of Q K^T), Acc (16 x 16 f32)
template <class T>
using A = wm::fragment<wm::matrix_a, 16, 16, 16, typename elem<T>::type, wm::row_major>;
template <class T>
using B = wm::fragment<wm::matrix_b, 16, 16, 16, typename elem<T>::type, wm::row_major>;
template <class T>
using Bt = wm::fragment<wm::matrix_b, 16, 16, 16, typename elem<T>::type, wm::col_major>;
using Acc = wm::fragment<wm::accumulator, 16, 16, 16, float>;

// p: 32-byte aligned, ld a multiple of 8 elements (16 bytes)
template <class F, class T>
GML_D void load(F& f, const T* p, unsigned ld) {
  wm::load_matrix_sync(f, reinterpret_cast<const typename elem<T>::type*>(p), ld);
}
// f32 tiles: ld a multiple of 4
GML_D void load(Acc& f, const float* p, unsigned ld) {
  wm::load_matrix_sync(f, p, ld, wm::mem_row_major);
}
GML_D void store(float* p, const Acc& f, unsigned ld) {
  wm::store_matrix_sync(p, f, ld, wm::mem_row_major);
}
GML_D void zero(Acc& f) { wm::fill_fragment(f, 0.f); }
template <class FA, class FB>
GML_D void mma(Acc& c, const FA& a, const FB& b) {
  wm::mma_sync(c, a, b, c);
}
}  // namespace tc

// ---------------------------------------------------------------- exponentials
// 2^x (x <= 0 here) as the hardware's approximation (relative error about 2^-22; results
// under 2^-126 flush to 0, which a probability beside the row's max of 1 never needs):
// exp2f's exact path keeps a predicate per element for the subnormal range, registers a
// row of 32 scores per lane cannot spare
#ifdef GML_HIP
GML_D float exp2_fast(float x) { return exp2f(x); }
#else
GML_D float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
#endif

// ---------------------------------------------------------------- asynchronous copies
// 16 bytes global -> shared memory without passing through registers (zero: write zeros,
// read nothing), grouped by copy_commit; copy_wait<N> returns when at most the N most
// recently committed groups are still in flight (a __syncthreads must follow before other
// threads read the data). CUDA: cp.async (sm_80+). HIP: plain copies, the waits no-ops.
#ifdef GML_HIP
GML_D void copy16_async(void* dst, const void* src, bool zero) {
  *reinterpret_cast<uint4*>(dst) =
      zero ? make_uint4(0u, 0u, 0u, 0u) : *reinterpret_cast<const uint4*>(src);
}
GML_D void copy_commit() {}
template <int N>
GML_D void copy_wait() {}
#else
GML_D void copy16_async(void* dst, const void* src, bool zero) {
  const unsigned s = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(zero ? 0 : 16)
               : "memory");
}
GML_D void copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
GML_D void copy_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// ---------------------------------------------------------------- which keys a block sees
// For a block of query rows [row0, row1) (numbered across batches, as Bias sees them):
// keys from `end` on are masked for every row (their tiles are never loaded), and keys
// below `free` are visible to every row with nothing added (their tiles skip the bias).
// Any bias not listed here is evaluated at every key.
struct KeySpan {
  int64_t end, free;
};
GML_D int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }
template <class Bias>
GML_D KeySpan key_span(const Bias&, int64_t, int64_t, int64_t n) {
  return {n, 0};
}
GML_D KeySpan key_span(const NoBias&, int64_t, int64_t, int64_t n) { return {n, n}; }
GML_D KeySpan key_span(const Causal& c, int64_t row0, int64_t row1, int64_t n) {
  // the rows' query positions: one run unless the block crosses into the next query
  // group (grouped heads, or a sequence shorter than the block), then all of 0..tq-1
  const int64_t first = row0 % c.tq, last = first + (row1 - row0) - 1;
  const int64_t lo = last < c.tq ? first : 0, hi = last < c.tq ? last : c.tq - 1;
  return {clamp64(hi + (c.n - c.tq) + 1, 0, n), clamp64(lo + (c.n - c.tq) + 1, 0, n)};
}
template <class M, int R>
GML_D KeySpan key_span(const Masked<M, R>& b, int64_t row0, int64_t row1, int64_t n) {
  return {b.is_causal ? key_span(b.causal, row0, row1, n).end : n, 0};
}

// The bias of one query row as a function of the key, with what depends on the row alone
// (Causal's limit, the mask row's offset: divisions) worked out once per row, not per key.
template <class Bias>
struct RowBias {
  Bias bias;
  int64_t row;
  GML_D float operator()(int64_t j) const { return bias(row, j); }
};
template <class Bias>
GML_D RowBias<Bias> row_bias(const Bias& b, int64_t row) {
  return {b, row};
}
struct CausalRow {
  int64_t last;  // the last key the row sees
  GML_D float operator()(int64_t j) const {
    return j <= last ? 0.f : -std::numeric_limits<float>::infinity();
  }
};
GML_D CausalRow row_bias(const Causal& c, int64_t row) { return {row % c.tq + (c.n - c.tq)}; }
template <class M>
struct MaskedRow {
  const M* mask;  // the row's start
  int64_t col_stride;
  CausalRow causal;
  bool is_causal;
  GML_D float operator()(int64_t j) const {
    const M m = mask[j * col_stride];
    float b = 0.f;
    if constexpr (std::is_same_v<M, bool>)
      b = m ? 0.f : -std::numeric_limits<float>::infinity();
    else
      b = float(load(&m));
    return is_causal ? b + causal(j) : b;
  }
};
template <class M, int R>
GML_D MaskedRow<M> row_bias(const Masked<M, R>& b, int64_t row) {
  int64_t off[1];
  offsets(b.rows, row, off);
  return {b.mask + off[0], b.col_stride, row_bias(b.causal, row), b.is_causal};
}

// ---------------------------------------------------------------- prefill attention
// y[b] = softmax(Q[b] K[b]^T * scale + bias) V[b] for every batch b (batch x kv head;
// Q's rows are a kv head's G query groups, G*Tq of them), read and written through
// (pointer, leading dim, batch stride) exactly as the cuBLAS path reads them, so q/k/v
// can come straight out of a fused qkv projection. The scores never reach global memory:
// a block owns 64 query rows (a warp per 16) and walks the keys in tiles, keeping per row
// the running max and sum of exponentials and rescaling its f32 output accumulator when
// the max grows (flash attention 2). Grid (ceil(M / 64), B, chunks).
//
// Few blocks (a batch of one, few heads: GPT-2's prefill has 8 row blocks x 12 heads for
// 132 SMs) leave the GPU mostly idle while the last row block walks every key tile. Then
// the keys are split into `chunks` ranges of `kchunk` (a multiple of the key tile) and
// block z walks range z only, writing its rows' unnormalised output, running max and sum
// to `partials` ([batch][chunk][row][DV + 2] floats), which attention_prefill_combine
// weighs into y (flash decoding's split, for prefill). `partials` null: one range, y
// written here.
constexpr int ATTN_PREFILL_ROWS = 64;
constexpr int ATTN_PREFILL_WARPS = ATTN_PREFILL_ROWS / 16;
constexpr int ATTN_PREFILL_THREADS = ATTN_PREFILL_WARPS * GML_WARP;

// Static shared memory of a block with key tiles of `bn`: Q, K and V tiles (rows padded
// by 8 elements so a fragment's rows start on different banks), then per warp its scores
// (f32, rows padded by 4) and one f32 per row.
template <int D, int DV>
constexpr int attention_prefill_smem(int bn) {
  return 2 * (ATTN_PREFILL_ROWS * (D + 8) + bn * (D + 8) + bn * (DV + 8)) +
         4 * ATTN_PREFILL_WARPS * 16 * (bn + 4) + 4 * ATTN_PREFILL_WARPS * 16;
}
// 64 keys per tile where that fits the 48 KB of static shared memory (head dims of 64,
// say), else 32: dynamic shared memory would need a per-kernel attribute set on the host,
// outside the CUDA graph the runtime replays
template <int D, int DV>
constexpr int attention_prefill_keys() {
  return attention_prefill_smem<D, DV>(64) <= 48 * 1024 ? 64 : 32;
}

// Rows [row0, row0 + ROWS) of a row-major matrix (p, leading dim ld) into shared memory
// (dst, leading dim LD) in 16-byte copies that run while the block computes (vec: p and
// ld 16-byte aligned; else element by element, synchronously). Rows from `limit` on
// (past the keys or the query rows) are zeros: a zero V row times a zero probability
// adds nothing, where uninitialised memory could hold a NaN.
template <class T, int ROWS, int W, int LD>
GML_D void tile_async(T* dst, const T* __restrict__ p, int64_t ld, int64_t row0, int64_t limit,
                      bool vec) {
  constexpr int PER_ROW = W / 8, CHUNKS = ROWS * PER_ROW;
#pragma unroll
  for (int i = 0; i < (CHUNKS + ATTN_PREFILL_THREADS - 1) / ATTN_PREFILL_THREADS; ++i) {
    const int c = int(threadIdx.x) + i * ATTN_PREFILL_THREADS;
    if (CHUNKS % ATTN_PREFILL_THREADS != 0 && c >= CHUNKS) break;
    const int r = c / PER_ROW, col = c % PER_ROW * 8;
    const bool in = row0 + r < limit;
    const T* src = in ? p + (row0 + r) * ld + col : p;
    T* d = dst + r * LD + col;
    if (vec) {
      copy16_async(d, src, !in);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) d[e] = in ? src[e] : T{};
    }
  }
}

template <class T>
GML_D bool aligned16(const T* p, int64_t ld) {
  return ((reinterpret_cast<uintptr_t>(p) | uintptr_t(ld) * sizeof(T)) % 16) == 0;
}

template <class T, int D, int DV, class Bias>
__global__ void __launch_bounds__(ATTN_PREFILL_THREADS)
    attention_prefill(int64_t m, int64_t n, int64_t heads, const T* __restrict__ q, int64_t ldq,
                      AttnBatch bsq, const T* __restrict__ k, int64_t ldk, AttnBatch bsk,
                      const T* __restrict__ v, int64_t ldv, AttnBatch bsv, T* __restrict__ y,
                      int64_t ldy, AttnBatch bsy, float scale, Bias bias, int64_t kchunk,
                      float* __restrict__ partials) {
  static_assert(is_half<T>::value, "tensor cores take f16 or bf16");
  static_assert(D % 16 == 0 && DV % 16 == 0 && D <= 128 && DV <= 128,
                "head dims: multiples of 16 up to 128");
  constexpr int BN = attention_prefill_keys<D, DV>();
  constexpr int LQ = D + 8, LK = D + 8, LV = DV + 8, LS = BN + 4, LP = BN + 8;
  // softmax: LPR lanes per row (2 on a 32-lane warp), each over CPL of the tile's keys
  constexpr int LPR = GML_WARP / 16, CPL = BN / LPR;
  // the output leaves through the warp's score buffer, W columns at a time
  constexpr int W = DV <= BN ? DV : (DV % 32 == 0 ? 32 : 16), LW = W + 4;
  constexpr float LOG2E = 1.4426950408889634f;
  const float ninf = -std::numeric_limits<float>::infinity();

  __shared__ __align__(128) T qs[ATTN_PREFILL_ROWS * LQ];
  __shared__ __align__(128) T ks[BN * LK];
  __shared__ __align__(128) T vs[BN * LV];
  // per warp: its 16 x BN scores in f32, overwritten by their probabilities as T (a
  // smaller footprint, written once every lane has read its scores)
  __shared__ __align__(128) float ss[ATTN_PREFILL_WARPS][16 * LS];
  __shared__ float rowf[ATTN_PREFILL_WARPS][16];  // per row: rescale, then 1 / sum

  const int warp = int(threadIdx.x) / GML_WARP, lane = int(threadIdx.x) % GML_WARP;
  // the last row blocks first: under a causal mask they have the most keys to walk, and
  // a grid of more blocks than the GPU holds at once then ends on the short ones
  const int64_t b = blockIdx.y, r0 = int64_t(gridDim.x - 1 - blockIdx.x) * ATTN_PREFILL_ROWS;
  q += bsq.at(b, heads);
  k += bsk.at(b, heads);
  v += bsv.at(b, heads);
  y += bsy.at(b, heads);
  const bool vec = aligned16(q, ldq) && aligned16(k, ldk) && aligned16(v, ldv) && aligned16(y, ldy);
  float* sw = ss[warp];
  T* pw = reinterpret_cast<T*>(sw);

  // rid[e]: the row (0..15) of accumulator element e, from a table of row numbers
  int rid[tc::Acc::num_elements];
  {
    for (int i = lane; i < 256; i += GML_WARP) sw[i] = float(i / 16);
    GML_SYNCWARP();
    tc::Acc t;
    tc::load(t, sw, 16);
#pragma unroll
    for (int e = 0; e < tc::Acc::num_elements; ++e) rid[e] = int(t.x[e]);
    GML_SYNCWARP();
  }
  tc::Acc o[DV / 16];
#pragma unroll
  for (int d = 0; d < DV / 16; ++d) tc::zero(o[d]);

  // this lane's row in the softmax and the output, and its share of the row's keys
  const int lr = lane / LPR, part = lane % LPR;
  const int64_t grow = r0 + warp * 16 + lr;  // row within the batch
  const bool live = grow < m;
  // the row's bias (rows numbered across batches, as Bias takes them; past the last row:
  // the last row's, never read)
  const auto rb = row_bias(bias, b * m + (live ? grow : m - 1));
  // running max (log2 units: scores * log2(e), so exp2 does the exponentials) and this
  // lane's part of the row's running sum (the LPR parts are added at the end)
  float mx = ninf, sum = 0.f;
  const float sl = scale * LOG2E;
  const int64_t rend = r0 + ATTN_PREFILL_ROWS < m ? r0 + ATTN_PREFILL_ROWS : m;
  const KeySpan span = key_span(bias, b * m + r0, b * m + rend, n);
  // this block's keys: its chunk's range, within what the rows may see
  const int64_t kbeg = partials ? int64_t(blockIdx.z) * kchunk : 0;
  const int64_t kend = partials && kbeg + kchunk < span.end ? kbeg + kchunk : span.end;

  // Copies in flight, in commit order: (Q, K tile 0), V tile 0, then per tile K t+1
  // (issued once every warp has its scores) and V t+1 (once every warp has used V t), so
  // each load overlaps the other product and the softmax. A group may be empty.
  tile_async<T, ATTN_PREFILL_ROWS, D, LQ>(qs, q, ldq, r0, m, vec);  // Q stays for the walk
  if (kbeg < kend) tile_async<T, BN, D, LK>(ks, k, ldk, kbeg, n, vec);
  copy_commit();
  if (kbeg < kend) tile_async<T, BN, DV, LV>(vs, v, ldv, kbeg, n, vec);
  copy_commit();
  for (int64_t j0 = kbeg; j0 < kend; j0 += BN) {
    const bool next = j0 + BN < kend;
    copy_wait<1>();  // this tile's K (and on the first, Q); V may still be on its way
    __syncthreads();

    // S = Q K^T for the warp's 16 rows: each Q fragment loaded once per tile
    {
      tc::Acc s[BN / 16];
#pragma unroll
      for (int c = 0; c < BN / 16; ++c) tc::zero(s[c]);
#pragma unroll
      for (int d = 0; d < D / 16; ++d) {
        tc::A<T> a;
        tc::load(a, qs + warp * 16 * LQ + d * 16, LQ);
#pragma unroll
        for (int c = 0; c < BN / 16; ++c) {
          tc::Bt<T> kb;
          tc::load(kb, ks + c * 16 * LK + d * 16, LK);
          tc::mma(s[c], a, kb);
        }
      }
#pragma unroll
      for (int c = 0; c < BN / 16; ++c) tc::store(sw + c * 16, s[c], LS);
    }
    __syncthreads();  // every warp has read K: the next tile's K goes in
    if (next) tile_async<T, BN, D, LK>(ks, k, ldk, j0 + BN, n, vec);
    copy_commit();

    // online softmax over the tile, a row's keys split between its LPR lanes in pairs:
    // lane part takes keys 2 (part + LPR c) and the one after, for c < CPL / 2 (8-byte
    // reads: a half-warp's 16 lanes cover 8 rows x 2 parts, 32 different banks)
    const bool biased = j0 + BN > span.free;
    const int valid = int(n - j0 < BN ? n - j0 : BN);  // keys of a partial last tile
    float x[CPL];
    float tmax = ninf;
#pragma unroll
    for (int c = 0; c < CPL / 2; ++c) {
      const int col = 2 * (part + LPR * c);
      const float2 sc = *reinterpret_cast<const float2*>(sw + lr * LS + col);
      x[2 * c] = sc.x * sl;
      x[2 * c + 1] = sc.y * sl;
      if (biased && live) {
#pragma unroll
        for (int h = 0; h < 2; ++h)
          x[2 * c + h] = col + h < valid ? x[2 * c + h] + rb(j0 + col + h) * LOG2E : ninf;
      }
      tmax = fmaxf(tmax, fmaxf(x[2 * c], x[2 * c + 1]));
    }
    // fmaxf skips NaN scores, which still make the row NaN: exp2(NaN - max) goes into the
    // sum and into P V (as softmax_warp_rows's NaN max does)
#pragma unroll
    for (int w = 1; w < LPR; w <<= 1) tmax = fmaxf(tmax, GML_SHFL_XOR(tmax, w));
    const float mnew = fmaxf(tmax, mx);
    // a row with nothing visible yet keeps max -inf: exp2(-inf - -inf) would be NaN
    const float corr = mnew == ninf ? 1.f : exp2_fast(mx - mnew);
    mx = mnew;
    sum *= corr;
    GML_SYNCWARP();  // every lane has read its scores: the probabilities overwrite them
#pragma unroll
    for (int c = 0; c < CPL / 2; ++c) {
      const float p0 = mnew == ninf ? 0.f : exp2_fast(x[2 * c] - mnew);
      const float p1 = mnew == ninf ? 0.f : exp2_fast(x[2 * c + 1] - mnew);
      sum += p0 + p1;
      *reinterpret_cast<uint32_t*>(pw + lr * LP + 2 * (part + LPR * c)) =
          uint32_t(to_half<T>(p0).bits) | uint32_t(to_half<T>(p1).bits) << 16;
    }
    if (part == 0) rowf[warp][lr] = corr;
    GML_SYNCWARP();

    copy_wait<1>();  // this tile's V (the next K may still be on its way)
    __syncthreads();

    // O = O * corr + P V
    float cf[tc::Acc::num_elements];
#pragma unroll
    for (int e = 0; e < tc::Acc::num_elements; ++e) cf[e] = rowf[warp][rid[e]];
#pragma unroll
    for (int d = 0; d < DV / 16; ++d)
#pragma unroll
      for (int e = 0; e < tc::Acc::num_elements; ++e) o[d].x[e] *= cf[e];
#pragma unroll
    for (int c = 0; c < BN / 16; ++c) {
      tc::A<T> pa;
      tc::load(pa, pw + c * 16, LP);
#pragma unroll
      for (int d = 0; d < DV / 16; ++d) {
        tc::B<T> vb;
        tc::load(vb, vs + c * 16 * LV + d * 16, LV);
        tc::mma(o[d], pa, vb);
      }
    }
    __syncthreads();  // every warp has read V (and its P): the next tile's V goes in
    if (next) tile_async<T, BN, DV, LV>(vs, v, ldv, j0 + BN, n, vec);
    copy_commit();
  }
  copy_wait<0>();  // nothing left in flight at exit (Q's copy, where no tile was walked)

  // y = O / sum; a row whose every score is -inf (sum 0) gets NaN, as softmax gives
#pragma unroll
  for (int w = 1; w < LPR; w <<= 1) sum += GML_SHFL_XOR(sum, w);
  if (partials != nullptr) {  // this chunk's share: O unnormalised, the max and the sum
    constexpr int64_t WIDTH = DV + 2;
    float* pp = partials + (b * int64_t(gridDim.z) + blockIdx.z) * m * WIDTH;
    if (part == 0 && live) {
      pp[grow * WIDTH + DV] = mx;  // log2 units, -inf where the chunk has no visible key
      pp[grow * WIDTH + DV + 1] = sum;
    }
#pragma unroll
    for (int c0 = 0; c0 < DV; c0 += W) {
#pragma unroll
      for (int d = 0; d < W / 16; ++d) tc::store(sw + d * 16, o[c0 / 16 + d], LW);
      GML_SYNCWARP();
      for (int i = lane; i < 16 * W; i += GML_WARP) {
        const int r = i / W, c = i % W;
        const int64_t row = r0 + warp * 16 + r;
        if (row < m) pp[row * WIDTH + c0 + c] = sw[r * LW + c];
      }
      GML_SYNCWARP();
    }
    return;
  }
  if (part == 0) rowf[warp][lr] = sum > 0.f ? 1.f / sum : std::numeric_limits<float>::quiet_NaN();
  GML_SYNCWARP();
  float inv[tc::Acc::num_elements];
#pragma unroll
  for (int e = 0; e < tc::Acc::num_elements; ++e) inv[e] = rowf[warp][rid[e]];
  // W columns at a time through the warp's buffer, then 16-byte stores along the rows
#pragma unroll
  for (int c0 = 0; c0 < DV; c0 += W) {
#pragma unroll
    for (int d = 0; d < W / 16; ++d) {
      tc::Acc t = o[c0 / 16 + d];
#pragma unroll
      for (int e = 0; e < tc::Acc::num_elements; ++e) t.x[e] *= inv[e];
      tc::store(sw + d * 16, t, LW);
    }
    GML_SYNCWARP();
    constexpr int PIECES = 16 * W / 8;
    for (int i = lane; i < PIECES; i += GML_WARP) {
      const int r = i / (W / 8), c = i % (W / 8) * 8;
      const int64_t row = r0 + warp * 16 + r;
      if (row >= m) continue;
      uint4 u;
      T* t = reinterpret_cast<T*>(&u);
#pragma unroll
      for (int e = 0; e < 8; ++e) t[e] = to_half<T>(sw[r * LW + c + e]);
      T* dst = y + row * ldy + c0 + c;
      if (vec) {
        *reinterpret_cast<uint4*>(dst) = u;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = t[e];
      }
    }
    GML_SYNCWARP();
  }
}

}  // namespace gml
#endif  // GML_NO_TENSOR_CORES

// (no tensor cores here: HIP without rocWMMA builds it too)
namespace gml {
// y[b, row] from attention_prefill's chunks: each chunk's O weighted by exp2(its max -
// the largest), over the weighted sums (NaN where no key was visible, as softmax gives).
// A warp per row, its lanes over the columns. Grid (ceil(M / 8), B).
constexpr int ATTN_PREFILL_COMBINE_THREADS = 8 * GML_WARP;

template <class T, int DV>
__global__ void __launch_bounds__(ATTN_PREFILL_COMBINE_THREADS)
    attention_prefill_combine(int64_t m, int64_t chunks, int64_t heads,
                              const float* __restrict__ partials, T* __restrict__ y, int64_t ldy,
                              AttnBatch bsy) {
  constexpr int64_t WIDTH = DV + 2;
  constexpr int CPL = (DV + GML_WARP - 1) / GML_WARP;
  const float ninf = -std::numeric_limits<float>::infinity();
  const int warp = int(threadIdx.x) / GML_WARP, lane = int(threadIdx.x) % GML_WARP;
  const int64_t b = blockIdx.y;
  const int64_t row = int64_t(blockIdx.x) * (ATTN_PREFILL_COMBINE_THREADS / GML_WARP) + warp;
  if (row >= m) return;
  const float* p = partials + b * chunks * m * WIDTH + row * WIDTH;
  const int64_t stride = m * WIDTH;  // the next chunk's row
  float mx = ninf;
  for (int64_t c = 0; c < chunks; ++c) mx = fmaxf(mx, p[c * stride + DV]);
  float total = 0.f, acc[CPL];
#pragma unroll
  for (int t = 0; t < CPL; ++t) acc[t] = 0.f;
  for (int64_t c = 0; c < chunks; ++c) {
    const float* pc = p + c * stride;
    const float w = pc[DV] == ninf ? 0.f : exp2f(pc[DV] - mx);
    total += w * pc[DV + 1];
#pragma unroll
    for (int t = 0; t < CPL; ++t) {
      const int col = lane + t * GML_WARP;
      if (col < DV) acc[t] += w * pc[col];
    }
  }
  const float inv = total > 0.f ? 1.f / total : std::numeric_limits<float>::quiet_NaN();
  T* yr = y + bsy.at(b, heads) + row * ldy;
#pragma unroll
  for (int t = 0; t < CPL; ++t) {
    const int col = lane + t * GML_WARP;
    if (col < DV) store(yr + col, acc[t] * inv);
  }
}

}  // namespace gml
