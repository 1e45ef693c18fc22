// How decode's kernels follow one another: programmatic dependent launch (pdl_wait,
// pdl_trigger, launch_pdl), the next kernel's weights prefetched into L2 (L2Ahead), and
// persistent chains (one kernel over several kernels' blocks, a grid barrier between:
// launch_chain); and blocks_for, a launch's grid size. Part of gml_gpu.cuh.
#pragma once

#include "gimlet/gpu/base.cuh"

namespace gml {

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
#ifdef GML_CHAIN_TRACE   // switches.CHAIN_TRACE: where a phase's time goes (run_phase)
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

}  // namespace gml
