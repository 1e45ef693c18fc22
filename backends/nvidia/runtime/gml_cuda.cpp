// gimlet's CUDA runtime library: what a generated segment (backends/gpu/codegen.py)
// needs around it on an NVIDIA GPU. One `Program` per loaded segment owns a stream,
// a cuBLAS handle with a fixed workspace (so GEMMs can be captured into graphs) and one
// CUDA graph per shape bucket. A call copies the inputs into the bucket's arena, replays
// the graph and copies the outputs out, ordered after and before the caller's stream
// with events: no host synchronisation on the hot path. Inputs and outputs whose
// addresses repeat (a KV cache the caller keeps) are read and written in place instead,
// by a graph captured for those addresses.
//
// Built on the machine that runs it (backends/nvidia/build.py), against the CUDA
// toolkit and the cuBLAS headers there; generated segments never include cuBLAS.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "gimlet/gpu/gml_gpu.cuh"

namespace {

// cuBLAS's workspace (cuBLAS's size for Hopper; GIMLET_GPU_GEMM_WORKSPACE in bytes sets
// another, 0 none). Under graph capture cuBLASLt puts a memset before each GEMM it gives
// the workspace (~1 us plus a gap), and a GEMM whose output fills the GPU many times over
// gains nothing from it: so only a GEMM of fewer output elements than kFillTiles 128x128
// tiles per SM gets it, where split-K may fill the SMs. Measured on the H200 (runs 24-25):
// a 24-layer GPT's micro-batch of 8192 rows, 16 a request pipelined over two GPUs, takes
// 94.45 ms a request without a workspace against 95.59 with; GPT-2's 512-token prefill
// (512 rows) 0.7368 ms with it against 0.7576 without.
constexpr size_t kWorkspace = 32u << 20;
constexpr int64_t kFillTiles = 2;

size_t workspace_bytes() {
  const char* v = std::getenv("GIMLET_GPU_GEMM_WORKSPACE");
  return v && *v ? size_t(std::strtoull(v, nullptr, 10)) : kWorkspace;
}

typedef int (*SegmentFn)(const gml::Ctx*, char*, void* const*, const int64_t*, cudaStream_t);

struct Program {
  SegmentFn fn = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr, done = nullptr;
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = kWorkspace;
  int64_t fill_elements = 0;    // a GEMM output this large fills the GPU without split-K
  unsigned* barrier = nullptr;  // a persistent chain's grid barrier (gml::ChainSync)
  gml::Ctx ctx{};
  bool graphs = true;
  char error[512] = {0};
};

// A graph of a bucket with some inputs read, and outputs written, where the caller keeps
// them: keyed by those addresses (0 for an end copied through the arena).
struct Bound {
  std::vector<uintptr_t> key;
  cudaGraphExec_t exec = nullptr;
};

struct Bucket {
  std::vector<int64_t> params;
  char* arena = nullptr;           // owned by the caller (a torch tensor), stable for the bucket
  cudaGraphExec_t exec = nullptr;  // every input and output copied through the arena
  // per input, then per output: the slots of `params` that address it (moved by the
  // caller's address minus the planned one to bind it in place), or unbindable
  std::vector<std::vector<int>> slots;
  std::vector<bool> bindable;
  std::vector<Bound> bound;                    // at most kBoundGraphs
  std::vector<std::vector<uintptr_t>> recent;  // the last kRecent keys seen
};

// A key gets its own graph the second time it comes (the first call with new addresses
// copies, as a caller passing fresh tensors each call always does), up to kBoundGraphs
// a bucket: a capture costs about a millisecond, a copy of a KV cache microseconds.
constexpr size_t kBoundGraphs = 8, kRecent = 16;
constexpr uintptr_t kBindAlign = 256;  // backends/gpu/shapes.py ALIGN

cudaDataType_t cuda_type(gml::DType t) {
  switch (t) {
    case gml::DType::F16:
      return CUDA_R_16F;
    case gml::DType::BF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

// Row-major C = A @ B as cuBLAS's column-major C^T = B^T A^T: swap the operands.
int gemm(const gml::Ctx* ctx, cudaStream_t stream, gml::DType ab, gml::DType c, bool trans_b,
         int64_t m, int64_t n, int64_t k, const void* a, int64_t lda, int64_t stride_a,
         const void* b, int64_t ldb, int64_t stride_b, void* c_ptr, int64_t ldc, int64_t stride_c,
         int64_t batch, float alpha) {
  auto* p = static_cast<Program*>(ctx->state);
  if (m == 0 || n == 0) return 0;
  cublasSetStream(p->blas, stream);
  const float beta = 0.f;
  // f32 operands: plain FP32 arithmetic (no TF32), as torch's default and the oracle do;
  // 16-bit operands accumulate in FP32 on tensor cores
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  const cublasStatus_t s = cublasGemmStridedBatchedEx(
      p->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, b,
      cuda_type(ab), int(ldb), stride_b, a, cuda_type(ab), int(lda), stride_a, &beta, c_ptr,
      cuda_type(c), int(ldc), stride_c, int(batch), compute, CUBLAS_GEMM_DEFAULT);
  return s == CUBLAS_STATUS_SUCCESS ? 0 : 1000 + int(s);
}

// cuBLASLt with a fused epilogue, in column-major terms D^T (n x m) = W^T(k x n)^T X^T
// (k x m): bias per row of D^T, R as C with beta = 1. The descriptors are built per call:
// under graph capture that is once per shape bucket.
int gemm_epilogue(const gml::Ctx* ctx, cudaStream_t stream, gml::DType t, int64_t m, int64_t n,
                  int64_t k, const void* x, const void* w, void* d, int64_t ldd, const void* bias,
                  bool gelu, const void* r) {
  auto* p = static_cast<Program*>(ctx->state);
  if (m == 0 || n == 0) return 0;
  // the handle on first use: segments that never call this never load cuBLASLt's state
  if (!p->lt && cublasLtCreate(&p->lt) != CUBLAS_STATUS_SUCCESS) return 1000 + 7;
  const cudaDataType_t dt = cuda_type(t);
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const cublasLtEpilogue_t ep = bias ? (gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                     : (gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
  const size_t ws = m * n < p->fill_elements ? p->workspace_bytes : 0;
  cublasStatus_t s = cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  if (s == CUBLAS_STATUS_SUCCESS && bias)
    s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&la, dt, k, n, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&lb, dt, k, m, k);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&lc, dt, n, m, ldd);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulPreferenceCreate(&pref);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof ws);
  cublasLtMatmulHeuristicResult_t best{};
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulAlgoGetHeuristic(p->lt, op, la, lb, lc, lc, pref, 1, &best, &found);
  if (s == CUBLAS_STATUS_SUCCESS && found == 0) s = CUBLAS_STATUS_NOT_SUPPORTED;
  const float alpha = 1.f, beta = r ? 1.f : 0.f;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmul(p->lt, op, &alpha, w, la, x, lb, &beta, r ? r : d, lc, d, lc, &best.algo,
                       p->workspace, ws, stream);
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (lc) cublasLtMatrixLayoutDestroy(lc);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (op) cublasLtMatmulDescDestroy(op);
  return s == CUBLAS_STATUS_SUCCESS ? 0 : 1000 + int(s);
}

int fail(Program* p, const char* what, int code) {
  snprintf(p->error, sizeof p->error, "%s: %s", what,
           code >= 1000 ? "cuBLAS error" : cudaGetErrorString(cudaError_t(code)));
  return code;
}

// The segment with `params` captured into an executable graph on the program's stream.
int capture(Program* p, const Bucket* b, const int64_t* params, void* const* weights,
            cudaGraphExec_t* exec) {
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamBeginCapture(p->stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) return fail(p, "beginning graph capture", int(e));
  int r = p->fn(&p->ctx, b->arena, weights, params, p->stream);
  e = cudaStreamEndCapture(p->stream, &graph);
  if (r) return fail(p, "capturing the segment", r);
  if (e != cudaSuccess) return fail(p, "ending graph capture", int(e));
  e = cudaGraphInstantiate(exec, graph, 0);
  cudaGraphDestroy(graph);
  return e == cudaSuccess ? 0 : fail(p, "instantiating the graph", int(e));
}

}  // namespace

extern "C" {

const char* gml_cuda_error(void* program) { return static_cast<Program*>(program)->error; }

void* gml_cuda_create(void* segment_fn, int graphs) {
  auto* p = new Program();
  p->fn = reinterpret_cast<SegmentFn>(segment_fn);
  p->graphs = graphs != 0;
  p->workspace_bytes = workspace_bytes();
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    delete p;
    return nullptr;
  }
  p->fill_elements = kFillTiles * sms * 128 * 128;
  if (cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaEventCreateWithFlags(&p->ready, cudaEventDisableTiming) != cudaSuccess ||
      cudaEventCreateWithFlags(&p->done, cudaEventDisableTiming) != cudaSuccess ||
      (p->workspace_bytes && cudaMalloc(&p->workspace, p->workspace_bytes) != cudaSuccess) ||
      cudaMalloc(&p->barrier, sizeof(unsigned)) != cudaSuccess ||
      cudaMemset(p->barrier, 0, sizeof(unsigned)) != cudaSuccess ||
      cublasCreate(&p->blas) != CUBLAS_STATUS_SUCCESS ||
      cublasSetWorkspace(p->blas, p->workspace, p->workspace_bytes) != CUBLAS_STATUS_SUCCESS ||
      // default math: tensor cores for 16-bit operands; FP32 stays FP32 (TF32 is opt-in).
      // (PEDANTIC_MATH also steers 16-bit GEMMs to old sm75 kernels: 6x slower on H200.)
      cublasSetMathMode(p->blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
    delete p;
    return nullptr;
  }
  p->ctx.gemm = gemm;
  p->ctx.gemm_epilogue = gemm_epilogue;
  p->ctx.barrier = p->barrier;
  p->ctx.state = p;
  return p;
}

void gml_cuda_destroy(void* program) {
  auto* p = static_cast<Program*>(program);
  if (!p) return;
  cudaStreamSynchronize(p->stream);
  cublasDestroy(p->blas);
  if (p->lt) cublasLtDestroy(p->lt);
  cudaFree(p->workspace);
  cudaFree(p->barrier);
  cudaEventDestroy(p->ready);
  cudaEventDestroy(p->done);
  cudaStreamDestroy(p->stream);
  delete p;
}

// `bind` lists, per input and then per output, a count and that many slots (backends/gpu/
// inplace.py), or -1 where the end is always copied.
void* gml_cuda_bucket(const int64_t* params, int64_t n, void* arena, const int64_t* bind,
                      int64_t n_bind) {
  auto* b = new Bucket();
  b->params.assign(params, params + n);
  b->arena = static_cast<char*>(arena);
  for (int64_t i = 0; i < n_bind;) {
    const int64_t count = bind[i++];
    b->bindable.push_back(count >= 0);
    b->slots.emplace_back();
    for (int64_t j = 0; j < count; ++j) b->slots.back().push_back(int(bind[i++]));
  }
  return b;
}

void gml_cuda_bucket_free(void* bucket) {
  auto* b = static_cast<Bucket*>(bucket);
  if (!b) return;
  if (b->exec) cudaGraphExecDestroy(b->exec);
  for (auto& g : b->bound) cudaGraphExecDestroy(g.exec);
  delete b;
}

// Graphs of the bucket that read or write some of the caller's tensors in place.
int gml_cuda_bound_graphs(void* bucket) { return int(static_cast<Bucket*>(bucket)->bound.size()); }

// One call: inputs -> arena, the segment (graph replay after the first call of a
// bucket), arena -> outputs; all on the program's stream, ordered after `caller` and
// before whatever `caller` runs next. An input or output whose address came before (a
// KV cache kept by the caller) is read or written in place by a graph of its own
// instead of copied. Returns 0 or an error code (text: gml_cuda_error).
int gml_cuda_run(void* program, void* bucket, void* const* weights, void* caller, int n_in,
                 void* const* in_ptrs, const int64_t* in_offsets, const int64_t* in_bytes,
                 int n_out, void* const* out_ptrs, const int64_t* out_offsets,
                 const int64_t* out_bytes) {
  auto* p = static_cast<Program*>(program);
  auto* b = static_cast<Bucket*>(bucket);
  auto s = static_cast<cudaStream_t>(caller);
  cudaError_t e = cudaEventRecord(p->ready, s);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(p->stream, p->ready, 0);
  if (e != cudaSuccess) return fail(p, "ordering after the caller", int(e));
  const int n = n_in + n_out;
  auto end = [&](int i) {  // (caller's address, planned address, bytes) of input/output i
    const bool in = i < n_in;
    const int j = in ? i : i - n_in;
    return std::make_tuple(
        reinterpret_cast<uintptr_t>(in ? in_ptrs[j] : out_ptrs[j]),
        reinterpret_cast<uintptr_t>(b->arena + (in ? in_offsets : out_offsets)[j]),
        (in ? in_bytes : out_bytes)[j]);
  };
  std::vector<uintptr_t> key(size_t(n), 0);  // the caller's address where bound, else 0
  bool any = false;
  for (int i = 0; i < n && size_t(i) < b->bindable.size(); ++i) {
    auto [addr, planned, bytes] = end(i);
    if (bytes && b->bindable[size_t(i)] && addr != planned && (addr - planned) % kBindAlign == 0) {
      key[size_t(i)] = addr;
      any = true;
    }
  }
  cudaGraphExec_t exec = nullptr;
  if (any && p->graphs) {
    for (auto& g : b->bound)
      if (g.key == key) exec = g.exec;
    if (!exec) {
      bool seen = false;
      for (auto& k : b->recent) seen = seen || k == key;
      if (!seen || b->bound.size() >= kBoundGraphs) {  // copied this time
        if (!seen) {
          if (b->recent.size() >= kRecent) b->recent.erase(b->recent.begin());
          b->recent.push_back(key);
        }
        key.assign(size_t(n), 0);
        any = false;
      }
    }
  }
  std::vector<int64_t> moved;  // the parameter table with the bound ends' slots moved
  if (any && !exec) {
    moved = b->params;
    for (int i = 0; i < n; ++i)
      if (key[size_t(i)])
        for (int slot : b->slots[size_t(i)])
          moved[size_t(slot)] += int64_t(key[size_t(i)] - std::get<1>(end(i)));
  }
  for (int i = 0; i < n_in && e == cudaSuccess; ++i) {
    auto [addr, planned, bytes] = end(i);
    if (bytes && !key[size_t(i)] && addr != planned)
      e = cudaMemcpyAsync(reinterpret_cast<void*>(planned), in_ptrs[i], size_t(bytes),
                          cudaMemcpyDeviceToDevice, p->stream);
  }
  if (e != cudaSuccess) return fail(p, "copying inputs", int(e));
  const int64_t* params = moved.empty() ? b->params.data() : moved.data();
  if (!p->graphs) {
    int r = p->fn(&p->ctx, b->arena, weights, params, p->stream);
    if (r) return fail(p, "running the segment", r);
  } else {
    if (!exec && !any && !b->exec) {
      if (int r = capture(p, b, params, weights, &b->exec)) return r;
    }
    if (!exec && any) {
      Bound g{key, nullptr};
      if (int r = capture(p, b, params, weights, &g.exec)) return r;
      b->bound.push_back(std::move(g));
      exec = b->bound.back().exec;
    }
    e = cudaGraphLaunch(exec ? exec : b->exec, p->stream);
    if (e != cudaSuccess) return fail(p, "launching the graph", int(e));
  }
  // out_bytes of a padded output (a head's logits, rows ldm apart) include the padding:
  // the caller's tensor has that layout (program.py returns it as a strided view)
  for (int i = 0; i < n_out && e == cudaSuccess; ++i) {
    auto [addr, planned, bytes] = end(n_in + i);
    if (bytes && !key[size_t(n_in + i)])
      e = cudaMemcpyAsync(out_ptrs[i], reinterpret_cast<void*>(planned), size_t(bytes),
                          cudaMemcpyDeviceToDevice, p->stream);
  }
  if (e == cudaSuccess) e = cudaEventRecord(p->done, p->stream);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(s, p->done, 0);
  if (e != cudaSuccess) return fail(p, "copying outputs", int(e));
  return 0;
}

// Wait for everything the program launched; surfaces asynchronous kernel faults.
int gml_cuda_sync(void* program) {
  auto* p = static_cast<Program*>(program);
  cudaError_t e = cudaStreamSynchronize(p->stream);
  return e == cudaSuccess ? 0 : fail(p, "running the segment", int(e));
}

}  // extern "C"
