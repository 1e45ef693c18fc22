// gimlet's GPU kernel header: what generated segment code (backends/gpu/codegen.py)
// includes. It is written in the part of CUDA C++ that HIP also compiles: the only
// vendor names live in the portability block below, so the ROCm backend compiles the
// same generated files with hipcc and -DGML_HIP.
//
// Conventions: tensors are contiguous, row-major, in one arena per segment (offsets
// from the memory plan; only a padded head's result has rows further apart, written by
// cuBLAS); f16/bf16 are stored as 16-bit values and computed in float, each op rounding
// its result as torch does; index arithmetic is int64_t, or 32-bit where a kernel checks
// that its sizes fit.
#pragma once

#include <stdint.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

// ---------------------------------------------------------------- portability
#ifdef GML_HIP
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#define GML_WARP 64
typedef hipStream_t gmlStream_t;
typedef hipError_t gmlError_t;
#define gmlSuccess hipSuccess
#define gmlGetLastError hipGetLastError
#define gmlMemsetAsync hipMemsetAsync
#define gmlMemcpyAsync hipMemcpyAsync
#define gmlMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define GML_SHFL_XOR(v, m) __shfl_xor((v), (m))
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define GML_WARP 32
typedef cudaStream_t gmlStream_t;
typedef cudaError_t gmlError_t;
#define gmlSuccess cudaSuccess
#define gmlGetLastError cudaGetLastError
#define gmlMemsetAsync cudaMemsetAsync
#define gmlMemcpyAsync cudaMemcpyAsync
#define gmlMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define GML_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#endif

#define GML_HD __host__ __device__ __forceinline__
#define GML_D __device__ __forceinline__

namespace gml {

// ---------------------------------------------------------------- the host context
// What the runtime library (backends/<vendor>/runtime/) hands a segment: its vendor
// BLAS behind one function, so generated code never includes cuBLAS or hipBLAS.
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

struct Ctx {
  // Row-major C[b] = A[b] @ B[b] (m x k times k x n), batch strides in elements;
  // trans_b: B is stored n x k. C may be f32 while A and B are 16-bit (attention
  // scores). Returns 0 or a vendor status code.
  int (*gemm)(const Ctx* ctx, gmlStream_t stream, DType ab, DType c, bool trans_b, int64_t m,
              int64_t n, int64_t k, const void* a, int64_t lda, int64_t stride_a, const void* b,
              int64_t ldb, int64_t stride_b, void* c_ptr, int64_t ldc, int64_t stride_c,
              int64_t batch, float alpha);
  // Row-major D = act(X @ W^T + bias) + R (X m x k, W n x k as a Linear stores it,
  // D and R with rows ldd apart) in one vendor GEMM with a fused epilogue: bias (n
  // elements) and R may be null, gelu is the tanh approximation (cuBLASLt's GELU), and
  // R only comes without gelu (the vendor adds it before the activation).
  int (*gemm_epilogue)(const Ctx* ctx, gmlStream_t stream, DType t, int64_t m, int64_t n, int64_t k,
                       const void* x, const void* w, void* d, int64_t ldd, const void* bias,
                       bool gelu, const void* r);
  void* state;  // the runtime's handles (BLAS handle, workspace)
  // A word of device memory for a persistent chain's grid barrier (gml::launch_chain),
  // zeroed once. Null where the runtime has none: then each kernel runs on its own.
  unsigned* barrier;
};

// ---------------------------------------------------------------- 16-bit floats
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};
template <class T>
struct is_half : std::false_type {};
template <>
struct is_half<bf16> : std::true_type {};
template <>
struct is_half<f16> : std::true_type {};

#ifdef GML_HIP
// bf16 by its bits (ROCm 5.x has no hip_bf16.h): the high half of a float, rounded to
// nearest even; a NaN stays a (quiet) NaN
GML_HD float f32(bf16 x) {
  const uint32_t u = uint32_t(x.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
GML_HD uint16_t bf16_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#else
GML_HD float f32(bf16 x) { return __bfloat162float(__ushort_as_bfloat16(x.bits)); }
GML_HD uint16_t bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16(x)); }
#endif
GML_HD float f32(f16 x) { return __half2float(__ushort_as_half(x.bits)); }
template <class T>
GML_HD T f32(T x) {
  return x;
}
template <class H>
GML_HD H to_half(float x) {
  if constexpr (std::is_same_v<H, bf16>)
    return bf16{bf16_bits(x)};
  else
    return f16{__half_as_ushort(__float2half(x))};
}
// x rounded to H's precision and kept in float (a fused kernel's intermediate values)
template <class H>
GML_HD float rounded(float x) {
  return f32(to_half<H>(x));
}
// load as the compute type / store from it
template <class T>
GML_HD auto load(const T* p) {
  if constexpr (is_half<T>::value)
    return f32(*p);
  else
    return *p;
}
template <class T, class V>
GML_HD void store(T* p, V v) {
  if constexpr (is_half<T>::value)
    *p = to_half<T>(float(v));
  else
    *p = static_cast<T>(v);
}

// ---------------------------------------------------------------- scalar helpers
// Same names as the CPU runtime's, so both backends share one table of scalar
// expressions (backends/cpu/codegen.py: _UNARY, _BINARY, _scalar_expr).
template <class T>
GML_HD T floordiv(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if (b == 0) return 0;
    T q = a / b;
    return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
  } else {
    return a / b;
  }
}
template <class T>
GML_HD T ipow(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    T r = 1;
    for (T i = 0; i < b; ++i) r *= a;
    return r;
  } else {
    return std::pow(a, b);
  }
}
template <class T>
GML_HD T maxnan(T a, T b) {
  return (a != a || a > b) ? a : b;
}
template <class T>
GML_HD T minnan(T a, T b) {
  return (a != a || a < b) ? a : b;
}
GML_HD float vexp(float x) { return expf(x); }
GML_HD double vexp(double x) { return exp(x); }
GML_HD float vtanh(float x) { return tanhf(x); }
GML_HD double vtanh(double x) { return tanh(x); }
GML_HD float verf(float x) { return erff(x); }
GML_HD double verf(double x) { return erf(x); }
template <class T>
GML_HD T sigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}
template <class T>
GML_HD T gelu_tanh(T x) {
  const T u = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
  return x / (T(1) + vexp(T(-2) * u));
}
template <class T>
GML_HD T gelu_erf(T x) {
  return x * T(0.5) * (T(1) + verf(x * T(0.7071067811865476)));
}

// ---------------------------------------------------------------- indexing
constexpr int MAXR = 8;

// An elementwise kernel's domain and, per operand, its strides in that domain
// (0 where the operand is broadcast). The host coalesces dims that every operand walks
// contiguously, so only the last |rank| of the R dims are used (1: one flat loop); rank is
// negative for domains of 2^31 elements or more, whose index math needs 64 bits.
template <int R, int K>
struct Index {
  int64_t rank;
  int64_t dims[R > 0 ? R : 1];
  int64_t strides[K > 0 ? K : 1][R > 0 ? R : 1];
};

// An Index read from the parameter table: rank, R dims, then each operand's R strides.
template <int R, int K>
inline Index<R, K> index_from(const int64_t* p) {
  Index<R, K> ix{};
  ix.rank = p[0];
  for (int d = 0; d < R; ++d) ix.dims[d] = p[1 + d];
  for (int k = 0; k < K; ++k)
    for (int d = 0; d < R; ++d) ix.strides[k][d] = p[1 + R + k * R + d];
  return ix;
}

// The operands' offsets for linear domain index i.
template <int R, int K>
GML_D void offsets(const Index<R, K>& ix, int64_t i, int64_t (&off)[K > 0 ? K : 1]) {
  if (R == 0 || ix.rank == 1 || ix.rank == -1) {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = R == 0 ? 0 : i * ix.strides[k][R > 0 ? R - 1 : 0];
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
  if (ix.rank > 0) {  // domains under 2^31 elements: 32-bit division, far cheaper than 64-bit
    uint32_t u = uint32_t(i);
#pragma unroll
    for (int d = R - 1; d >= 0; --d) {
      if (d < R - ix.rank) break;
      const uint32_t n = uint32_t(ix.dims[d]), c = u % n;
      u /= n;
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += int64_t(c) * ix.strides[k][d];
    }
    return;
  }
  const int64_t rank = -ix.rank;
#pragma unroll
  for (int d = R - 1; d >= 0; --d) {
    if (d < R - rank) break;
    const int64_t c = i % ix.dims[d];
    i /= ix.dims[d];
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += c * ix.strides[k][d];
  }
}
// False for an output (operand k) broadcast along a dim where i's coordinate is not 0:
// such an output is written once, by the first thread along that dim.
template <int R, int K>
GML_D bool first_along_broadcast(const Index<R, K>& ix, int64_t i, int k) {
  bool first = true;
  const int64_t rank = ix.rank < 0 ? -ix.rank : ix.rank;
#pragma unroll
  for (int d = R - 1; d >= 0; --d) {
    if (d < R - rank) break;
    const int64_t c = i % ix.dims[d];
    i /= ix.dims[d];
    if (ix.strides[k][d] == 0 && c != 0) first = false;
  }
  return first;
}

// Grid-stride loops: a capped grid covers any size.
#define GML_FOR(i, n)                                                       \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------- vector access
// Elementwise kernels and embedding move V consecutive elements a thread, 16 bytes of
// their widest type, where the shapes and pointers allow it (backends/gpu/vectorize.py);
// a 2-byte element a thread is far below what HBM gives. (load_chunk, below, is the
// GEMVs' 16-byte load widened to float.)
template <int B>
struct Word;  // an unsigned type of B bytes: one access
template <>
struct Word<16> {
  using type = uint4;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<4> {
  using type = uint32_t;
};
template <>
struct Word<2> {
  using type = uint16_t;
};
template <>
struct Word<1> {
  using type = uint8_t;
};

// True where every pointer is 16-byte aligned.
template <class... T>
GML_HD bool aligned16(const T*... p) {
  return ((reinterpret_cast<uintptr_t>(p) % 16 == 0) && ...);
}

// Elements a thread of a row-wise copy of rows of `dim` elements: 16 bytes' worth where
// a row is a whole number of them, else 1.
template <class T>
GML_HD int64_t vec_width(int64_t dim) {
  constexpr int64_t V = sizeof(T) < 16 ? 16 / sizeof(T) : 1;
  return dim % V == 0 ? V : 1;
}

// out = the V elements at p (aligned to their V * sizeof(T) bytes: one access) as the
// compute type C, converted as load() converts one; where `stride` is 0 (an operand
// broadcast along the innermost dim) the one element at p, loaded once, V times.
template <class T, class C, int V>
GML_D void load_vec(const T* p, int64_t stride, C (&out)[V]) {
  if (stride == 0) {
    const C x = load(p);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = x;
    return;
  }
  using U = typename Word<V * sizeof(T)>::type;
  alignas(U) T v[V];
  *reinterpret_cast<U*>(v) = *reinterpret_cast<const U*>(p);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = load(&v[e]);
}
// The V elements at p (aligned as above) = in, each converted as store() converts it.
template <class T, class C, int V>
GML_D void store_vec(T* p, const C (&in)[V]) {
  using U = typename Word<V * sizeof(T)>::type;
  alignas(U) T v[V];
#pragma unroll
  for (int e = 0; e < V; ++e) store(&v[e], in[e]);
  *reinterpret_cast<U*>(p) = *reinterpret_cast<const U*>(v);
}

// ---------------------------------------------------------------- dependent launch
// Hopper's programmatic dependent launch: a kernel started with launch_pdl may begin
// while the kernel before it in the stream is still running, once every block of that
// one has called pdl_trigger() (or exited). Before its pdl_wait() such a kernel may only
// read what nothing in the segment writes (weights): pdl_wait() returns when the kernel
// before it has completed and its writes are visible. So a decode GEMV streams its
// weight into registers while the previous kernel finishes, and a launch's latency
// hides behind the previous kernel instead of following it. Every thread of a kernel
// started with launch_pdl passes pdl_wait() before it touches the arena (an early
// return included). Both calls are no-ops before sm_90, on HIP, and in a kernel started
// with <<<>>>.
GML_D void pdl_wait() {
#if !defined(GML_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
GML_D void pdl_trigger() {
#if !defined(GML_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// What the next decode kernel reads that nothing writes (a GEMV's weight, attention's KV
// cache: up to two ranges), prefetched into L2 by this kernel's blocks as they start, each
// block a share of the 128-byte lines. Under PDL that kernel's blocks load those before
// they wait, but only the blocks resident while this kernel runs; the rest start as its
// blocks leave (registers) and would read HBM then. A null range is nothing.
struct L2Ahead {
  const void* p[2] = {nullptr, nullptr};
  int64_t bytes[2] = {0, 0};
  GML_D void issue() const {
#if !defined(GML_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (!p[r]) continue;
      const int64_t lines = (bytes[r] + 127) / 128, per = (lines + gridDim.x - 1) / gridDim.x;
      const int64_t end = (blockIdx.x + 1) * per < lines ? (blockIdx.x + 1) * per : lines;
      const char* base = static_cast<const char*>(p[r]);
      for (int64_t l = blockIdx.x * per + threadIdx.x; l < end; l += blockDim.x)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(base + l * 128));
    }
#endif
  }
};

// kernel<<<grid, block, 0, stream>>>(args...), allowed to start early as above (CUDA);
// a plain launch on HIP. A failed launch is left for gmlGetLastError, as <<<>>> does.
template <class... P, class... A>
inline void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, gmlStream_t stream,
                       A&&... args) {
#ifdef GML_HIP
  hipLaunchKernelGGL(kernel, grid, block, 0, stream, P(static_cast<A&&>(args))...);
#else
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  (void)cudaLaunchKernelEx(&cfg, kernel, P(static_cast<A&&>(args))...);
#endif
}

// ---------------------------------------------------------------- persistent chains
// A run of decode's kernels (GEMVs, split attention and its combine) may run as one
// persistent kernel, a *chain* (launch_chain): each of its blocks takes, kernel after
// kernel, its share of that kernel's blocks, and a grid barrier stands where a kernel
// boundary stood (opt-in, backends/gpu/chains.py: on the H200 it has not beaten the
// kernels launched one by one under PDL). So such a kernel's body is written once,
// against a sync policy S: S::trigger() where it lets the next kernel start, S::wait()
// before it reads what the kernels before it wrote.
constexpr int CHAIN_THREADS = 256;  // a chain's block: every phase's block size

struct Pdl {  // a kernel of its own: programmatic dependent launch (above)
  static constexpr bool PERSISTENT = false;
  GML_D void trigger() const { pdl_trigger(); }
  GML_D void wait() const { pdl_wait(); }
};

#ifdef GML_HIP
#define GML_GRID_CONSTANT
#else
#define GML_GRID_CONSTANT __grid_constant__
#endif

// In a chain, wait() returns once every block has arrived at the barrier after the
// previous phase (the first wait of a phase; later ones return at once), so a GEMV's
// weight loads, issued before it, overlap the barrier as they overlapped the kernel
// boundary under PDL. The barrier is one word in device memory (Ctx::barrier), as
// cooperative groups' grid sync keeps it: block 0 adds 2^31 - (blocks - 1), every other
// block 1, so the top bit flips once all have arrived and the low bits are as before
// (no reset, and the next chain starts from whatever the word holds). Thread 0 watches
// the bit, then the block's barrier (1.0 us against 1.5 with every warp watching:
// benchmarks/results/gpu_chain.md): every thread of a block calls wait() at one point.
struct ChainSync {
  static constexpr bool PERSISTENT = true;
  unsigned* bar;
  unsigned blocks;
  unsigned flipped = 0;  // the top bit once the barrier in progress is passed
  bool waited = true;    // the first phase reads what kernels before the chain wrote
#ifdef GML_CHAIN_TRACE   // codegen.CHAIN_TRACE: where a phase's time goes (run_phase)
  unsigned phase = 0;
  long long passed = 0;  // clock64() when this block passed the phase's barrier
#endif
  GML_D void start() { flipped = *reinterpret_cast<volatile unsigned*>(bar) >> 31; }
  GML_D void trigger() const {}
  GML_D void wait() {
    if (waited) return;
    waited = true;
    if (threadIdx.x == 0) {
      while ((*reinterpret_cast<volatile unsigned*>(bar) >> 31) != flipped) {
      }
      __threadfence();  // acquire: the other blocks' writes, not stale L1 lines
    }
    __syncthreads();
#ifdef GML_CHAIN_TRACE
    passed = clock64();
#endif
  }
  // every thread of the block, after the block's share of a phase
  GML_D void arrive() {
    __syncthreads();  // the block's writes happen before thread 0's release fence
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(bar, blockIdx.x == 0 ? 0x80000000u - (blocks - 1) : 1u);
    }
    flipped ^= 1u;
    waited = false;
  }
};

// One kernel of a chain, as the host builds it (phase()): Body(sync, block, stride,
// blocks, args...) does the kernel's blocks block, block + stride, ... below `blocks`;
// none where this bucket does not run it (another row count's GEMV).
template <auto Body, class... A>
struct Phase {
  int64_t blocks;
  std::tuple<A...> args;
};
template <auto Body, class... A>
inline Phase<Body, std::decay_t<A>...> phase(bool runs, int64_t blocks, A&&... args) {
  return {runs ? blocks : 0, std::tuple<std::decay_t<A>...>(static_cast<A&&>(args)...)};
}

// Each of the chain's blocks does its share of the phase; then the barrier. Not inlined:
// every layer's phase of one kernel is the same function, compiled once; it reads its
// arguments where the launch left them (the kernel's parameters, GML_GRID_CONSTANT).
template <auto Body, class... A>
__device__ __noinline__ void run_phase(ChainSync& sync, const Phase<Body, A...>& ph) {
  if (ph.blocks == 0) return;
#ifdef GML_CHAIN_TRACE
  const long long start = clock64();
  sync.passed = start;
#endif
  std::apply([&](const A&... a) { Body(sync, blockIdx.x, gridDim.x, ph.blocks, a...); }, ph.args);
#ifdef GML_CHAIN_TRACE
  const long long done = clock64();
#endif
  sync.wait();  // a block with no share passes this barrier before it arrives at the next
  sync.arrive();
#ifdef GML_CHAIN_TRACE
  if (threadIdx.x == 0 && (blockIdx.x == 0 || blockIdx.x == gridDim.x - 1))
    printf(
        "chain trace: block %u phase %u cycles: to barrier %lld, body after it %lld, arrive %lld\n",
        blockIdx.x, sync.phase, sync.passed - start, done - sync.passed, clock64() - done);
  ++sync.phase;
#endif
}

// BLOCKS blocks an SM: registers capped so that they fit (spilling if they must)
template <int BLOCKS, class... Ph>
__global__ void __launch_bounds__(CHAIN_THREADS, BLOCKS)
    chain_kernel(ChainSync s, const GML_GRID_CONSTANT std::tuple<Ph...> phases) {
  ChainSync sync = s;
  sync.start();
  std::apply([&](const Ph&... ph) { (run_phase(sync, ph), ...); }, phases);
}

// The phases as one kernel over as many blocks as can be resident together (a
// cooperative launch: it fails rather than leaving the barrier waiting on a block that
// never starts). The phases' arguments travel as the kernel's parameters (up to 32 KB).
template <int BLOCKS, class... Ph>
inline int launch_chain(const Ctx* ctx, gmlStream_t stream, Ph... phases) {
#ifdef GML_HIP
  (void)ctx, (void)stream;
  return 1;  // no HIP runtime sets Ctx::barrier yet, so no chain is launched there
#else
  auto kernel = chain_kernel<BLOCKS, Ph...>;
  int dev = 0, sms = 0, per_sm = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess)
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, CHAIN_THREADS, 0);
  if (e != cudaSuccess) return int(e);
  if (per_sm < 1) return int(cudaErrorInvalidConfiguration);
  per_sm = per_sm < BLOCKS ? per_sm : BLOCKS;
  ChainSync sync{ctx->barrier, unsigned(sms * per_sm)};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(sync.blocks);
  cfg.blockDim = dim3(CHAIN_THREADS);
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return int(cudaLaunchKernelEx(&cfg, kernel, sync, std::tuple<Ph...>(phases...)));
#endif
}

// Whether a bucket runs a chain: its slot says the chain stands for its steps there, and
// the runtime gave what the chain kernel reads (else the steps run as they are).
inline bool chained(const Ctx* ctx, int64_t taken) {
#ifdef GML_HIP
  (void)ctx, (void)taken;
  return false;
#else
  return taken && ctx->barrier;
#endif
}

inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

// ---------------------------------------------------------------- block reductions
template <class T>
GML_D T warp_sum(T v) {
#pragma unroll
  for (int m = GML_WARP / 2; m > 0; m >>= 1) v += GML_SHFL_XOR(v, m);
  return v;
}
template <class T>
GML_D T warp_max(T v) {
#pragma unroll
  for (int m = GML_WARP / 2; m > 0; m >>= 1) v = maxnan(v, GML_SHFL_XOR(v, m));
  return v;
}
// the identity of max: -inf for floats, the smallest value for integers
template <class T>
GML_HD T lowest() {
  if constexpr (std::is_integral_v<T>)
    return std::numeric_limits<T>::lowest();
  else
    return -std::numeric_limits<T>::infinity();
}
// Sum / max over the block (blockDim.x a multiple of the warp, at most 1024 threads).
template <class T, bool MAX>
GML_D T block_reduce(T v) {
  __shared__ T part[1024 / GML_WARP];
  const int lane = threadIdx.x % GML_WARP, warp = threadIdx.x / GML_WARP;
  v = MAX ? warp_max(v) : warp_sum(v);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / GML_WARP;
  T r = lane < warps ? part[lane] : (MAX ? lowest<T>() : T(0));
  return MAX ? warp_max(r) : warp_sum(r);
}

// ---------------------------------------------------------------- kernels
// Reductions over the middle axis of a contiguous (outer, n, inner) view.
enum class Red : int { Sum = 0, Mean = 1, Max = 2, Min = 3, Any = 4 };

template <class T, class O, Red K>
__global__ void reduce_mid(int64_t outer, int64_t n, int64_t inner, const T* __restrict__ x,
                           O* __restrict__ y) {
  // integers sum exactly in 64 bits; floats in float (double for double)
  using V = std::conditional_t<std::is_integral_v<T>, long long,
                               std::conditional_t<std::is_same_v<T, double>, double, float>>;
  GML_FOR(o, outer * inner) {
    const int64_t a = o / inner, b = o % inner;
    const T* p = x + a * n * inner + b;
    V acc = K == Red::Max   ? lowest<V>()
            : K == Red::Min ? -lowest<V>() - (std::is_integral_v<V> ? 1 : 0)
                            : V(0);
    for (int64_t j = 0; j < n; ++j) {
      const V v = V(load(p + j * inner));
      if constexpr (K == Red::Max)
        acc = maxnan(v, acc);
      else if constexpr (K == Red::Min)
        acc = minnan(v, acc);
      else if constexpr (K == Red::Any)
        acc = (acc != V(0) || v != V(0)) ? V(1) : V(0);
      else
        acc += v;
    }
    if constexpr (K == Red::Mean) acc = acc / V(n);
    store(y + o, acc);
  }
}

// order reversal for min-as-max: -x for floats, ~x for integers (no overflow at lowest)
template <class V>
GML_D V flip(V x) {
  if constexpr (std::is_integral_v<V>)
    return ~x;
  else
    return -x;
}

// Rows of a contiguous (rows, n) view reduced by one block each (inner == 1 fast path).
template <class T, class O, Red K>
__global__ void reduce_rows(int64_t n, const T* __restrict__ x, O* __restrict__ y) {
  const T* p = x + int64_t(blockIdx.x) * n;
  // min is the max of the negated values, any the max of (x != 0): one block reduction;
  // integers accumulate exactly in 64 bits (min of integers: max of ~x, no overflow)
  constexpr bool MAX = K == Red::Max || K == Red::Min || K == Red::Any;
  using V = std::conditional_t<std::is_integral_v<T>, long long, float>;
  V acc = MAX ? lowest<V>() : V(0);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    V v = V(load(p + j));
    if constexpr (K == Red::Min) v = flip(v);
    if (K == Red::Any) v = v != V(0) ? V(1) : V(0);
    acc = MAX ? maxnan(v, acc) : acc + v;
  }
  acc = block_reduce<V, MAX>(acc);
  if constexpr (K == Red::Min) acc = flip(acc);
  if (K == Red::Any) acc = acc > V(0) ? V(1) : V(0);  // an empty row: lowest, false
  if (threadIdx.x == 0) store(y + blockIdx.x, K == Red::Mean ? acc / V(n) : acc);
}

// softmax / log_softmax over rows of n, one block per row. `bias(row, j)` gives what
// is added to x[row, j] * scale before the softmax (-inf hides the element): nothing,
// a causal limit or an attention mask (attention scores' rows are queries).
struct NoBias {
  GML_D float operator()(int64_t, int64_t) const { return 0.f; }
};
// key j is visible to query q (the row's position among tq) when j <= q + (n - tq)
struct Causal {
  int64_t n, tq;
  GML_D float operator()(int64_t row, int64_t j) const {
    return j <= (row % tq) + (n - tq) ? 0.f : -std::numeric_limits<float>::infinity();
  }
};
// an attention mask broadcast over the rows' [batch.., heads, tq] dims, then along keys
template <class M, int R>
struct Masked {
  const M* mask;
  Index<R, 1> rows;
  int64_t col_stride;
  Causal causal;
  bool is_causal;
  GML_D float operator()(int64_t row, int64_t j) const {
    int64_t off[1];
    offsets(rows, row, off);
    const M m = mask[off[0] + j * col_stride];
    float b = 0.f;
    if constexpr (std::is_same_v<M, bool>)
      b = m ? 0.f : -std::numeric_limits<float>::infinity();
    else
      b = float(load(&m));
    return is_causal ? b + causal(row, j) : b;
  }
};

template <class T, class O, bool LOG, class Bias>
__global__ void softmax_rows(int64_t n, const T* __restrict__ x, O* __restrict__ y, float scale,
                             Bias bias) {
  const int64_t row = blockIdx.x;
  const T* p = x + row * n;
  O* q = y + row * n;
  const float ninf = -std::numeric_limits<float>::infinity();
  float m = ninf;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    m = maxnan(float(load(p + j)) * scale + bias(row, j), m);
  m = block_reduce<float, true>(m);
  float s = 0.f;
  if (m != ninf)
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      s += expf(float(load(p + j)) * scale + bias(row, j) - m);
  s = block_reduce<float, false>(s);
  const float ls = logf(s);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = float(load(p + j)) * scale + bias(row, j) - m;
    if (LOG)
      store(q + j, v - ls);
    else
      store(q + j, m == ninf ? std::numeric_limits<float>::quiet_NaN() : expf(v) / s);
  }
}

// running sum along the middle axis of a contiguous (outer, n, inner) view
template <class T, class O>
__global__ void cumsum_mid(int64_t outer, int64_t n, int64_t inner, const T* __restrict__ x,
                           O* __restrict__ y) {
  using V = std::conditional_t<std::is_integral_v<O>, int64_t,
                               std::conditional_t<std::is_same_v<O, double>, double, float>>;
  GML_FOR(o, outer * inner) {
    const int64_t a = o / inner, b = o % inner;
    const int64_t base = a * n * inner + b;
    V acc = V(0);
    for (int64_t j = 0; j < n; ++j) {
      acc += V(load(x + base + j * inner));
      store(y + base + j * inner, acc);
    }
  }
}

// layer norm over rows of n, one block per row (weight, bias optional): any n (rows
// longer than layer_norm_reg takes; it reads x three times)
template <class T>
__global__ void layer_norm_rows(int64_t n, const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ b, T* __restrict__ y, float eps) {
  const T* p = x + int64_t(blockIdx.x) * n;
  T* q = y + int64_t(blockIdx.x) * n;
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += float(load(p + j));
  const float mean = block_reduce<float, false>(s) / float(n);
  float v = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float d = float(load(p + j)) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(block_reduce<float, false>(v) / float(n) + eps);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    float o = (float(load(p + j)) - mean) * rstd;
    if (w) o *= float(load(w + j));
    if (b) o += float(load(b + j));
    store(q + j, o);
  }
}

// Layer norm over rows of n <= ROW elements held in registers: x is read once and y
// written once, 16 bytes at a time where every pointer is 16-byte aligned and n a multiple
// of that many elements. A warp per row (LN_THREADS / GML_WARP rows a block) while a row
// is at most 32 elements per lane (ROW <= LN_WARP_ROW), else a block of LN_THREADS per
// row. Same numerics as layer_norm_rows: float sums, the mean, then the sum of squared
// deviations from it (two passes over the registers), rsqrtf(var + eps).
constexpr int LN_THREADS = 128;
constexpr int LN_WARP_ROW = 32 * GML_WARP;  // elements a warp keeps, 32 a lane
template <int ROW>
inline unsigned layer_norm_blocks(int64_t rows) {
  constexpr int per_block = ROW <= LN_WARP_ROW ? LN_THREADS / GML_WARP : 1;
  return unsigned((rows + per_block - 1) / per_block);
}

template <class T, int ROW, bool VEC>
GML_D void layer_norm_row(int64_t n, const T* __restrict__ p, const T* __restrict__ w,
                          const T* __restrict__ b, T* __restrict__ q, float eps) {
  constexpr bool WARP = ROW <= LN_WARP_ROW;
  constexpr int TPR = WARP ? GML_WARP : LN_THREADS;       // threads a row
  constexpr int V = VEC ? 16 / sizeof(T) : 1;             // elements a load
  constexpr int LOADS = (ROW + TPR * V - 1) / (TPR * V);  // loads a thread
  const int t = WARP ? threadIdx.x % GML_WARP : threadIdx.x;
  auto sum = [](float v) {
    if constexpr (WARP)
      return warp_sum(v);
    else
      return block_reduce<float, false>(v);
  };
  // load l of thread t covers elements [(l * TPR + t) * V, + V): adjacent threads adjacent
  float v[LOADS][V];
  float s = 0.f;
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    const int64_t j = (int64_t(l) * TPR + t) * V;
    if constexpr (VEC) {
      alignas(16) T raw[V];
      if (j < n) *reinterpret_cast<uint4*>(raw) = *reinterpret_cast<const uint4*>(p + j);
#pragma unroll
      for (int e = 0; e < V; ++e) v[l][e] = j < n ? float(load(raw + e)) : 0.f;
    } else {
      v[l][0] = j < n ? float(load(p + j)) : 0.f;
    }
#pragma unroll
    for (int e = 0; e < V; ++e) s += v[l][e];
  }
  const float mean = sum(s) / float(n);
  float d2 = 0.f;
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    if ((int64_t(l) * TPR + t) * V >= n) continue;  // a whole load is in the row or none of it
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float d = v[l][e] - mean;
      d2 += d * d;
    }
  }
  const float rstd = rsqrtf(sum(d2) / float(n) + eps);
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    const int64_t j = (int64_t(l) * TPR + t) * V;
    if (j >= n) continue;
    alignas(16) T g[V], c[V], out[V];
    if constexpr (VEC) {
      if (w) *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(w + j);
      if (b) *reinterpret_cast<uint4*>(c) = *reinterpret_cast<const uint4*>(b + j);
    } else {
      if (w) g[0] = w[j];
      if (b) c[0] = b[j];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float o = (v[l][e] - mean) * rstd;
      if (w) o *= float(load(g + e));
      if (b) o += float(load(c + e));
      store(out + e, o);
    }
    if constexpr (VEC)
      *reinterpret_cast<uint4*>(q + j) = *reinterpret_cast<const uint4*>(out);
    else
      q[j] = out[0];
  }
}

template <class T, int ROW>
__global__ void __launch_bounds__(LN_THREADS)
    layer_norm_reg(int64_t rows, int64_t n, const T* __restrict__ x, const T* __restrict__ w,
                   const T* __restrict__ b, T* __restrict__ y, float eps) {
  constexpr bool WARP = ROW <= LN_WARP_ROW;
  const int64_t row = WARP ? int64_t(blockIdx.x) * (LN_THREADS / GML_WARP) + threadIdx.x / GML_WARP
                           : int64_t(blockIdx.x);
  if (row >= rows) return;  // a whole warp (a block's rows are whole warps)
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  // the same for every row: x's and y's rows stay aligned when n is a multiple of 16 bytes
  if (n % (16 / sizeof(T)) == 0 && aligned(x) && aligned(y) && aligned(w) && aligned(b))
    layer_norm_row<T, ROW, true>(n, x + row * n, w, b, y + row * n, eps);
  else
    layer_norm_row<T, ROW, false>(n, x + row * n, w, b, y + row * n, eps);
}

// out[i, :] = weight[idx[i], :]: a thread copies 16 bytes where a row is a whole number of
// them (vec_width: the launch sizes its grid by it) and w and y are 16-byte aligned, else
// an element (an unaligned y gets a grid of the vector path's size, looping).
template <class T, class I>
__global__ void embedding(int64_t n_idx, int64_t dim, int64_t rows, const T* __restrict__ w,
                          const I* __restrict__ idx, T* __restrict__ y) {
  constexpr int64_t V = sizeof(T) < 16 ? 16 / sizeof(T) : 1;
  if (V > 1 && vec_width<T>(dim) == V && aligned16(w, y)) {
    const int64_t pieces = dim / V;  // a row's 16-byte pieces
    GML_FOR(c, n_idx * pieces) {
      const int64_t i = c / pieces, j = (c - i * pieces) * V;
      int64_t r = int64_t(idx[i]);
      if (r < 0) r += rows;
      uint4 v = {0u, 0u, 0u, 0u};  // T{}: all zero bits
      if (r >= 0 && r < rows) v = *reinterpret_cast<const uint4*>(w + r * dim + j);
      *reinterpret_cast<uint4*>(y + i * dim + j) = v;
    }
    return;
  }
  GML_FOR(e, n_idx * dim) {
    const int64_t i = e / dim, j = e % dim;
    int64_t r = int64_t(idx[i]);
    if (r < 0) r += rows;
    y[e] = (r >= 0 && r < rows) ? w[r * dim + j] : T{};
  }
}

// y[a, i, b] = x[a, idx[i], b] over a contiguous (outer, rows, inner) x: index_select
template <class T, class I>
__global__ void take_mid(int64_t outer, int64_t n_idx, int64_t rows, int64_t inner,
                         const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ y) {
  GML_FOR(e, outer * n_idx * inner) {
    const int64_t b = e % inner, i = (e / inner) % n_idx, a = e / (inner * n_idx);
    int64_t r = int64_t(idx[i]);
    if (r < 0) r += rows;
    y[e] = (r >= 0 && r < rows) ? x[(a * rows + r) * inner + b] : T{};
  }
}

// Advanced indexing by K integer tensors on consecutive dims (aten.index): the index
// tensors broadcast over domain `bix`; y[a, j, b] = x[a, idx_0[j], .., idx_K-1[j], b].
template <class I, int K>
struct IndexTensors {
  const I* p[K];
  int64_t rows[K];    // the indexed dims' sizes (negative indices wrap)
  int64_t stride[K];  // their strides in x
};
template <class T, class I, int R, int K>
__global__ void gather_nd(int64_t n, int64_t nb, int64_t inner, int64_t outer_stride,
                          Index<R, K> bix, IndexTensors<I, K> ts, const T* __restrict__ x,
                          T* __restrict__ y) {
  GML_FOR(e, n) {
    const int64_t b = e % inner, j = (e / inner) % nb, a = e / (inner * nb);
    int64_t off[K];
    offsets(bix, j, off);
    int64_t src = a * outer_stride + b;
    bool ok = true;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      int64_t r = int64_t(ts.p[k][off[k]]);
      if (r < 0) r += ts.rows[k];
      ok = ok && r >= 0 && r < ts.rows[k];
      src += r * ts.stride[k];
    }
    y[e] = ok ? x[src] : T{};
  }
}

template <class T>
__global__ void arange(int64_t n, double start, double step, T* __restrict__ y) {
  GML_FOR(i, n) store(y + i, start + double(i) * step);
}

// y (rows x n, contiguous) = x whose rows are `ld` elements apart (a padded GEMM result
// read by an op that wants it unpadded). A thread writes one 16-byte piece of y (its
// elements may straddle two rows of x: the loads are scalar but a warp's are adjacent, so
// coalesced), with 32-bit index math where x's span fits; an unaligned y, or rows shorter
// than a piece, take an element at a time.
template <class T>
inline unsigned copy_pitched_blocks(int64_t total, int threads) {
  return blocks_for((total + int64_t(16 / sizeof(T)) - 1) / int64_t(16 / sizeof(T)), threads);
}
template <class T>
__global__ void copy_pitched(int64_t rows, int64_t n, int64_t ld, const T* __restrict__ x,
                             T* __restrict__ y) {
  constexpr int V = 16 / sizeof(T);
  const int64_t total = rows * n;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  if (n >= V && rows * ld < (int64_t(1) << 31) && reinterpret_cast<uintptr_t>(y) % 16 == 0) {
    const uint32_t cols = uint32_t(n), pitch = uint32_t(ld), count = uint32_t(total);
    for (int64_t p = first; p * V < total; p += step) {
      const uint32_t e = uint32_t(p) * V;
      uint32_t r = e / cols, c = e - r * cols;
      alignas(16) T v[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        v[k] = e + k < count ? x[r * pitch + c] : T{};
        if (++c == cols) {  // n >= V: a piece crosses at most one row end
          c = 0;
          ++r;
        }
      }
      if (e + V <= count) {
        *reinterpret_cast<uint4*>(y + e) = *reinterpret_cast<const uint4*>(v);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k)  // unrolled: v stays in registers
          if (e + k < count) y[e + k] = v[k];
      }
    }
    return;
  }
  for (int64_t i = first; i < total; i += step) y[i] = x[(i / n) * ld + i % n];
}

// y (contiguous, `R` dims) = x read through strides (permute, expand, slice, concat)
template <class T, int R>
__global__ void copy_strided(int64_t n, Index<R, 2> ix, const T* __restrict__ x,
                             T* __restrict__ y) {
  GML_FOR(i, n) {
    int64_t off[2];
    offsets(ix, i, off);
    y[off[1]] = x[off[0]];
  }
}

// Decode-time matrix-vector products: acc[r] = sum_k x[r, k] * w[col, k] for r < M (w as
// nn.Linear stores it, n x k), a warp per output column, 16-byte loads along k, all M
// rows sharing each weight load. Bandwidth-bound: the weight is read once. Generated
// kernels pass their epilogue (bias, activation, residual, store) to gemv_nt.
constexpr int GEMV_THREADS = 256, GEMV_COLS = GEMV_THREADS / GML_WARP;  // a warp per column

// a float result as a T would hold it (a matmul's output before its epilogue, a
// normalized GEMV row)
template <class T>
GML_HD float rounded_as(float x) {
  if constexpr (is_half<T>::value)
    return rounded<T>(x);
  else
    return x;
}
// The 16 bytes at p (aligned), widened to float.
template <class T>
GML_D void load_chunk(const T* p, float (&out)[16 / sizeof(T)]) {
  T v[16 / sizeof(T)];
  *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int e = 0; e < int(16 / sizeof(T)); ++e) out[e] = float(load(&v[e]));
}

// The GEMV's rows: x as stored, or x through a layer norm over k (decode: the norm that
// feeds a Linear is computed by each warp on the fly instead of by its own kernel; the
// normalized value is rounded to T, as the norm's output would be).
// Every rows type also gives `column(col)`, what its column needs loaded before the wait,
// and `finish(acc, column, k)`, applied to the warp's sums before the epilogue; STATEFUL
// rows accumulate per warp as chunks are read (one column a warp, no split: S == 1).
template <class T>
struct Rows {
  static constexpr bool STATEFUL = false;
  const T* __restrict__ x;
  template <int E>
  struct Early {};  // nothing to load before the wait
  template <int E>
  GML_D Early<E> early(int64_t, int64_t, int64_t) const {
    return {};
  }
  struct Column {};
  GML_D Column column(int64_t) const { return {}; }
  template <int M>
  GML_D void finish(float (&)[M], const Column&, int64_t) const {}
  template <int M>
  GML_D void prepare(int64_t) {}
  GML_D float at(int r, int64_t k, int64_t j) const { return float(load(x + r * k + j)); }
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)]) const {
    load_chunk(x + r * k + j, out);
  }
  template <int E>
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)], const Early<E>&,
                   int) const {
    chunk(r, k, j, out);
  }
};
template <class T>
struct LnRows {
  static constexpr bool STATEFUL = false;
  const T* __restrict__ x;
  const T* __restrict__ g;  // weight and bias: nullptr when absent
  const T* __restrict__ b;
  float eps;
  struct Column {};
  GML_D Column column(int64_t) const { return {}; }
  template <int M>
  GML_D void finish(float (&)[M], const Column&, int64_t) const {}
  float mean[4] = {0.f, 0.f, 0.f, 0.f}, rstd[4] = {1.f, 1.f, 1.f, 1.f};
  // The norm's weight and bias at the lane's first E chunks of 16 bytes (j0, j0 + step,
  // ...), loaded before the wait (weights: nothing in the segment writes them), so that
  // normalizing x waits on no load of its own. (prefetch.global.L1 instead made these
  // kernels 2.4x slower on the H200: benchmarks/results/gpu_gpt2_runT.md.)
  template <int E>
  struct Early {
    uint4 g[E], b[E];
  };
  template <int E>
  GML_D Early<E> early(int64_t k, int64_t j0, int64_t step) const {
    Early<E> e{};
#pragma unroll
    for (int u = 0; u < E; ++u) {
      const int64_t j = j0 + u * step;
      if (j < k && g) e.g[u] = *reinterpret_cast<const uint4*>(g + j);
      if (j < k && b) e.b[u] = *reinterpret_cast<const uint4*>(b + j);
    }
    return e;
  }
  // two passes per row (the mean, then squared deviations from it, as torch), the
  // warp's lanes along k; 16-byte loads where k allows, so a row's loads are in flight
  // together (the second pass reads L1)
  template <int M>
  GML_D void prepare(int64_t k) {
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const T* xr = x + r * k;
      mean[r] = warp_sum(lane_sum(xr, k, [](float v) { return v; })) / float(k);
      const float mu = mean[r];
      const float var = warp_sum(lane_sum(xr, k, [mu](float v) { return (v - mu) * (v - mu); }));
      rstd[r] = rsqrtf(var / float(k) + eps);
    }
  }
  // this lane's share of sum f(x[j]) over a row of k
  template <class F>
  GML_D static float lane_sum(const T* xr, int64_t k, F f) {
    const int lane = threadIdx.x % GML_WARP;
    constexpr int V = 16 / sizeof(T);
    float s = 0.f;
    if (k % V == 0) {
#pragma unroll 4
      for (int64_t j = int64_t(lane) * V; j < k; j += int64_t(GML_WARP) * V) {
        float c[V];
        load_chunk(xr + j, c);
#pragma unroll
        for (int e = 0; e < V; ++e) s += f(c[e]);
      }
    } else {
      for (int64_t j = lane; j < k; j += GML_WARP) s += f(float(load(xr + j)));
    }
    return s;
  }
  GML_D float norm(int r, int64_t j, float v) const {
    float o = (v - mean[r]) * rstd[r];
    if (g) o *= float(load(g + j));
    if (b) o += float(load(b + j));
    return rounded_as<T>(o);
  }
  GML_D float at(int r, int64_t k, int64_t j) const {
    return norm(r, j, float(load(x + r * k + j)));
  }
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)]) const {
    uint4 gv{}, bv{};
    if (g) gv = *reinterpret_cast<const uint4*>(g + j);  // j is a multiple of 16 bytes here
    if (b) bv = *reinterpret_cast<const uint4*>(b + j);
    normalize(r, k, j, gv, bv, out);
  }
  // chunk u < E of the lane's first, its weight and bias loaded early
  template <int E>
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)], const Early<E>& e,
                   int u) const {
    normalize(r, k, j, e.g[u], e.b[u], out);
  }
  GML_D void normalize(int r, int64_t k, int64_t j, const uint4& g16, const uint4& b16,
                       float (&out)[16 / sizeof(T)]) const {
    constexpr int V = 16 / sizeof(T);
    const T* gt = reinterpret_cast<const T*>(&g16);
    const T* bt = reinterpret_cast<const T*>(&b16);
    load_chunk(x + r * k + j, out);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float o = (out[e] - mean[r]) * rstd[r];
      if (g) o *= float(load(&gt[e]));
      if (b) o += float(load(&bt[e]));
      out[e] = rounded_as<T>(o);
    }
  }
};

// x through a layer norm folded into the GEMV's weight at load time: W' = W diag(g) (the
// norm's weight scales W's columns along k), c1 = W' 1 and c2 = W b (the norm's bias), as
// floats a column. Column n's sum is then
//   sum_k W'[n,k] (x_k - mean) rstd + c2[n] = rstd (W'x - mean c1[n]) + c2[n],
// and the statistics come from the pass over x that the product makes (sums of x and of
// x^2 beside W'x, reduced with it), not from two passes before it: GPT-2 decode's qkv and
// fc GEMVs each spent ~1.5 us of their ~4.3 us share of the chain on those passes
// (benchmarks/results/gpu_decode_timeline_run13_nostats.log). The variance is
// E[x^2] - mean^2 in f32 (clamped at 0), exact enough while the row's spread is not
// ~1e-3 of its mean; the normalized x is not rounded to T first, as the norm's output
// would be (f16: within the product's own rounding).
template <class T>
struct LnFoldRows {
  static constexpr bool STATEFUL = true;
  const T* __restrict__ x;
  const float* __restrict__ c1;
  const float* __restrict__ c2;
  float eps;
  mutable float s1[4] = {0.f, 0.f, 0.f, 0.f}, s2[4] = {0.f, 0.f, 0.f, 0.f};
  template <int E>
  struct Early {};
  template <int E>
  GML_D Early<E> early(int64_t, int64_t, int64_t) const {
    return {};
  }
  struct Column {
    float c1 = 0.f, c2 = 0.f;
  };
  GML_D Column column(int64_t col) const { return {c1[col], c2[col]}; }
  template <int M>
  GML_D void prepare(int64_t) {}
  GML_D float at(int r, int64_t k, int64_t j) const {
    const float v = float(load(x + r * k + j));
    s1[r] += v;
    s2[r] += v * v;
    return v;
  }
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)]) const {
    load_chunk(x + r * k + j, out);
#pragma unroll
    for (int e = 0; e < int(16 / sizeof(T)); ++e) {
      s1[r] += out[e];
      s2[r] += out[e] * out[e];
    }
  }
  template <int E>
  GML_D void chunk(int r, int64_t k, int64_t j, float (&out)[16 / sizeof(T)], const Early<E>&,
                   int) const {
    chunk(r, k, j, out);
  }
  // every lane: acc holds the warp's sums already; the statistics are reduced here
  template <int M>
  GML_D void finish(float (&acc)[M], const Column& c, int64_t k) const {
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const float mean = warp_sum(s1[r]) / float(k);
      const float var = fmaxf(warp_sum(s2[r]) / float(k) - mean * mean, 0.f);
      acc[r] = rsqrtf(var + eps) * (acc[r] - mean * c.c1) + c.c2;
    }
  }
};

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

// Kernels of the lowerings kept in their own modules (backends/gpu/conv.py, tensor_ops.py),
// and flash attention for prefill (codegen.py's sdpa).
#include "gimlet/gpu/attention.cuh"
#include "gimlet/gpu/conv.cuh"
#include "gimlet/gpu/tensor_ops.cuh"
