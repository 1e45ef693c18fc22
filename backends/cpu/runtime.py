"""The C++ runtime every generated CPU kernel file includes (`gimlet_cpu_runtime.h`).

It is kept as a Python string, not a loose file, so it ships with the package and so
its text can be hashed together with the generated source: changing the runtime must
invalidate cached libraries. Generated code stays short and readable because the
non-elementwise kernels (matmul, attention, convolution, pooling, ...) live here as
small templates over contiguous row-major tensors.
"""

RUNTIME_HEADER_NAME = "gimlet_cpu_runtime.h"

RUNTIME_HEADER = r"""// gimlet CPU backend runtime: tensors, shapes and the non-elementwise kernels.
// Every tensor is contiguous row-major; `Tensor::own` keeps its buffer alive, so
// reshapes alias their input and buffers are released when their last user is done.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <unordered_map>
#include <vector>

#ifndef GML_NO_BLAS
// numpy's bundled OpenBLAS (ILP64, symbol-prefixed): linked by path, no system BLAS needed.
extern "C" void scipy_cblas_sgemm64_(int layout, int trans_a, int trans_b, int64_t m, int64_t n,
                                     int64_t k, float alpha, const float* a, int64_t lda,
                                     const float* b, int64_t ldb, float beta, float* c,
                                     int64_t ldc);
// per-calling-thread OpenBLAS thread count: our OpenMP threads each run a 1-thread GEMM
extern "C" int openblas_set_num_threads_local(int n);
extern "C" void scipy_cblas_sgemv64_(int layout, int trans, int64_t m, int64_t n, float alpha,
                                     const float* a, int64_t lda, const float* x, int64_t incx,
                                     float beta, float* y, int64_t incy);
#endif
#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace gml {

constexpr int MAXR = 8;
constexpr int64_t PAR_MIN = 32768;  // work (~elements) below which a loop stays on one core

// ---------------------------------------------------------------- thread pool

// A small pool instead of OpenMP parallel regions. An OpenMP region ends in a barrier
// that waits for every thread, so on a busy machine a worker the OS has not scheduled
// yet stalls each op for up to a time slice (we measured 0.1 ms per op, a third of a
// transformer's run). Here a loop is cut into chunks that threads claim from a shared
// counter; the calling thread claims chunks too and waits only for chunks already
// claimed, so a late worker simply finds nothing left to do. Workers poll for the next
// job for 200 us (ops follow each other within microseconds), yielding so they never
// hold a core someone else could use, then sleep on a futex.
// Thread count: GIMLET_CPU_THREADS, else OMP_NUM_THREADS, else the CPUs we may run on.
class ThreadPool {
 public:
  static ThreadPool& get() {
    static ThreadPool* pool = new ThreadPool();  // never destroyed: workers run until exit
    return *pool;
  }
  int threads() const { return int(workers_.size()) + 1; }

  // fn(chunk) for chunk in [0, n), spread over the pool; returns when all are done.
  void run(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    if (n == 1 || workers_.empty() || in_pool_) {
      for (int64_t c = 0; c < n; ++c) fn(c);
      return;
    }
    std::lock_guard<std::mutex> lock(submit_);  // one job at a time (callers may be threads)
    fn_ = &fn;
    n_ = n;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = (slot_.load(std::memory_order_relaxed) >> 32) + 1;
    slot_.store(gen << 32, std::memory_order_release);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      wake_.fetch_add(1, std::memory_order_seq_cst);
      syscall(SYS_futex, &wake_, FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
    }
    in_pool_ = true;
    work(gen);
    in_pool_ = false;
    for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins)
      if (spins > 1000) std::this_thread::yield();
  }

 private:
  ThreadPool() {
    int n = 0;
    for (const char* var : {"GIMLET_CPU_THREADS", "OMP_NUM_THREADS"})
      if (!n && std::getenv(var)) n = std::atoi(std::getenv(var));
    if (n <= 0) {
      cpu_set_t set;
      n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { loop(); });
    for (auto& t : workers_) t.detach();
  }

  // Claim and run chunks of job `gen` until none are left (or a newer job started).
  void work(uint64_t gen) {
    uint64_t v = slot_.load(std::memory_order_acquire);
    while ((v >> 32) == gen && int64_t(uint32_t(v)) < n_) {
      if (!slot_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;
      (*fn_.load(std::memory_order_relaxed))(int64_t(uint32_t(v)));  // fn_/n_ stay put until every chunk is done
      done_.fetch_add(1, std::memory_order_release);
      v = slot_.load(std::memory_order_acquire);
    }
  }

  void loop() {
    in_pool_ = true;
#ifndef GML_NO_BLAS
    openblas_set_num_threads_local(1);
#endif
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = slot_.load(std::memory_order_acquire) >> 32;
      const auto start = std::chrono::steady_clock::now();
      for (int spins = 0; gen == seen; ++spins) {
        if ((spins & 255) == 255 &&
            std::chrono::steady_clock::now() - start > std::chrono::microseconds(200)) {
          const int32_t ticket = wake_.load(std::memory_order_seq_cst);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          if ((slot_.load(std::memory_order_seq_cst) >> 32) == seen)
            syscall(SYS_futex, &wake_, FUTEX_WAIT_PRIVATE, ticket, nullptr, nullptr, 0);
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        }
        if (spins < 64) {
#if defined(__x86_64__)
          __builtin_ia32_pause();
#endif
        } else {
          sched_yield();  // a thread sharing our core (the caller, on a busy machine) runs
        }
        gen = slot_.load(std::memory_order_acquire) >> 32;
      }
      seen = gen;
      work(gen);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex submit_;
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<uint64_t> slot_{0};  // job generation << 32 | next chunk to claim
  std::atomic<int64_t> done_{0};
  std::atomic<int32_t> wake_{0};  // futex word: bumped to wake sleeping workers
  std::atomic<int> sleepers_{0};
  static thread_local bool in_pool_;
};
inline thread_local bool ThreadPool::in_pool_ = false;

inline int num_threads() { return ThreadPool::get().threads(); }

// body(lo, hi) over [0, n) in chunks; `cost` is the work per index (~elements), so
// small loops stay on the calling thread. Chunks outnumber threads so a busy core's
// share moves to an idle one.
template <class F>
void parallel_for(int64_t n, int64_t cost, F&& body) {
  const int nt = num_threads();
  if (n <= 0) return;
  if (nt <= 1 || n == 1 || n * cost < PAR_MIN) {
    body(int64_t(0), n);
    return;
  }
  const int64_t chunks = std::min<int64_t>(n, std::min<int64_t>(4 * nt, n * cost / (PAR_MIN / 2)));
  const int64_t step = (n + chunks - 1) / chunks;
  ThreadPool::get().run((n + step - 1) / step, [&](int64_t c) {
    body(c * step, std::min(n, (c + 1) * step));
  });
}

struct Shape {
  int rank = 0;
  int64_t d[MAXR] = {0};
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= d[i];
    return n;
  }
  int64_t inner() const { return rank ? d[rank - 1] : 1; }
};

inline void fail(const std::string& msg) { throw std::runtime_error(msg); }

inline std::string str(const Shape& s) {
  std::string out = "[";
  for (int i = 0; i < s.rank; ++i) out += (i ? "x" : "") + std::to_string(s.d[i]);
  return out + "]";
}

inline Shape shape(std::initializer_list<int64_t> dims) {
  Shape s;
  for (int64_t v : dims) s.d[s.rank++] = v;
  return s;
}

inline Shape shape_from(const int64_t* dims, int rank) {
  Shape s;
  s.rank = rank;
  for (int i = 0; i < rank; ++i) s.d[i] = dims[i];
  return s;
}

inline void strides(const Shape& s, int64_t* st) {
  int64_t acc = 1;
  for (int i = s.rank - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s.d[i];
  }
}

template <class T>
struct Tensor {
  std::shared_ptr<void> own;
  T* data = nullptr;
  Shape shape;
};

// Buffers are recycled across ops and runs instead of going back to malloc: glibc
// serves blocks of 128 KiB and more with mmap, so every run would page-fault its large
// activations in afresh (a third of a small transformer's time). Free blocks wait in a
// size-keyed pool; a request takes the smallest free block of at least its size and at
// most twice it. The pool holds at most POOL_MAX bytes of free blocks.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: buffers may outlive static teardown
    return *pool;
  }
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        void* p = it->second;
        sizes_[p] = it->first;
        held_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    void* p = std::aligned_alloc(64, bytes);
    if (!p) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = bytes;
    return p;
  }
  void give(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    const size_t bytes = it->second;
    sizes_.erase(it);
    if (held_ + bytes > POOL_MAX) {
      std::free(p);
      return;
    }
    held_ += bytes;
    free_.emplace(bytes, p);
  }

 private:
  static constexpr size_t POOL_MAX = size_t(1) << 30;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> sizes_;  // blocks in use -> their capacity
  size_t held_ = 0;
};

template <class T>
Tensor<T> empty(const Shape& s) {
  Tensor<T> t;
  t.shape = s;
  size_t bytes = (size_t(std::max<int64_t>(s.numel(), 1)) * sizeof(T) + 63) / 64 * 64;
  T* p = static_cast<T*>(Pool::get().take(bytes));
  if (!p) fail("out of memory allocating " + str(s));
  t.own = std::shared_ptr<void>(p, [](void* q) { Pool::get().give(q); });
  t.data = p;
  return t;
}

template <class T>
Tensor<T> view(const void* p, const Shape& s) {
  Tensor<T> t;
  t.data = const_cast<T*>(static_cast<const T*>(p));
  t.shape = s;
  return t;
}

// Check a run-time shape against the IR type (-1 = a `?` dim).
inline void check_shape(const Shape& s, std::initializer_list<int64_t> want, const char* what) {
  bool ok = int(want.size()) == s.rank;
  int i = 0;
  for (int64_t w : want) ok = ok && (w < 0 || (i < s.rank && s.d[i] == w)), ++i;
  if (!ok) fail(std::string(what) + ": unexpected shape " + str(s));
}

template <class T>
Tensor<T> reshape(const Tensor<T>& x, const Shape& s) {
  if (s.numel() != x.shape.numel())
    fail("reshape " + str(x.shape) + " to " + str(s) + ": element counts differ");
  Tensor<T> t = x;
  t.shape = s;
  return t;
}

// numpy broadcasting of shapes right-aligned to `rank`.
inline Shape broadcast(int rank, std::initializer_list<Shape> shapes) {
  Shape out;
  out.rank = rank;
  for (int i = 0; i < rank; ++i) out.d[i] = 1;
  for (const Shape& s : shapes) {
    for (int i = 0; i < s.rank; ++i) {
      int64_t& o = out.d[rank - s.rank + i];
      if (s.d[i] == o || s.d[i] == 1) continue;
      if (o != 1) fail("cannot broadcast " + str(s) + " in a result of rank " + std::to_string(rank));
      o = s.d[i];
    }
  }
  return out;
}

// Strides for reading `in` as if broadcast to `out` (0 along broadcast dims).
inline void bstrides(const Shape& in, const Shape& out, int64_t* st) {
  int64_t cont[MAXR];
  strides(in, cont);
  for (int i = 0; i < out.rank; ++i) {
    int j = i - (out.rank - in.rank);
    st[i] = (j < 0 || in.d[j] == 1) ? 0 : cont[j];
    if (j >= 0 && in.d[j] != 1 && in.d[j] != out.d[i])
      fail("cannot broadcast " + str(in) + " to " + str(out));
  }
}

// Offset of row `r` (all dims but the last) of `out` in a tensor read with strides `st`.
inline int64_t row_offset(int64_t r, const Shape& out, const int64_t* st) {
  int64_t off = 0;
  for (int i = out.rank - 2; i >= 0; --i) {
    off += (r % out.d[i]) * st[i];
    r /= out.d[i];
  }
  return off;
}

// True when row `r` has coordinate 0 along every dim a broadcast result does not have,
// i.e. the one row of the loop domain that writes such a result.
inline bool row_first(int64_t r, const Shape& out, const int64_t* st) {
  for (int i = out.rank - 2; i >= 0; --i) {
    if (st[i] == 0 && r % out.d[i] != 0) return false;
    r /= out.d[i];
  }
  return true;
}

inline void check_inner(const Shape& s, const Shape& dom, const char* what) {
  if (s.rank && s.d[s.rank - 1] != dom.inner() && dom.inner() != 1)
    fail(std::string(what) + ": last dim of " + str(s) + " does not match " + str(dom));
}

// ---------------------------------------------------------------- scalar helpers

template <class T>
inline T floordiv(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if (b == 0) return 0;
    T q = a / b;
    return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
  } else {
    return a / b;
  }
}
template <class T>
inline T ipow(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    T r = 1;
    for (T i = 0; i < b; ++i) r *= a;
    return r;
  } else {
    return std::pow(a, b);
  }
}
template <class T>
inline T maxnan(T a, T b) { return (a != a || a > b) ? a : b; }
template <class T>
inline T minnan(T a, T b) { return (a != a || a < b) ? a : b; }

// ---------------------------------------------------------------- vectorizable math

// libm's expf/tanhf/erff are scalar calls, so a loop using them runs one element at a
// time (GELU alone was a third of a transformer's run). These float versions are plain
// inline arithmetic that GCC turns into AVX code inside `omp simd` loops; selects
// instead of branches (if-converted thanks to -fno-trapping-math). Accuracy against
// libm: exp 1 ulp, tanh 2 ulp, erf 4e-7 absolute; inf/nan behave like libm.
#define GML_INLINE inline __attribute__((always_inline))

GML_INLINE float pow2i(int32_t n) {  // 2^n for -126 <= n <= 127, built from its bits
  const int32_t bits = (n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// e^x = 2^n e^r with |r| <= ln2/2 (Cody-Waite split of ln2), Cephes's degree-6
// polynomial for e^r; 2^n applied in two halves so results near overflow/underflow
// (denormals included) come out as libm's.
GML_INLINE float vexp(float x) {
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 88.8f ? 88.8f : xc;
  const int32_t n = int32_t(xc * 1.44269504088896341f + 150.5f) - 150;  // round(x/ln2)
  const float nf = float(n);
  float r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t h = n / 2;
  const float y = p * pow2i(h) * pow2i(n - h);
  return x != x ? x : y;
}

// Cephes's odd polynomial below 0.625, else 1 - 2 / (e^2|x| + 1) with the sign of x.
GML_INLINE float vtanh(float x) {
  const float a = std::fabs(x), z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  float big = 1.0f - 2.0f / (vexp(2.0f * a) + 1.0f);
  big = x < 0.0f ? -big : big;
  return a < 0.625f ? small : big;
}

// A rational approximation x P(x^2) / Q(x^2) on [-4, 4] (Eigen's), +-1 beyond.
GML_INLINE float verf(float v) {
  float x = v < -4.0f ? -4.0f : v;
  x = x > 4.0f ? 4.0f : x;
  const float z = x * x;
  float p = -2.72614225801306e-10f;
  p = p * z + 2.77068142495902e-08f;
  p = p * z - 2.10102402082508e-06f;
  p = p * z - 5.69250639462346e-05f;
  p = p * z - 7.34990630326855e-04f;
  p = p * z - 2.95459980854025e-03f;
  p = p * z - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * z - 2.13374055278905e-04f;
  q = q * z - 1.68282697438203e-03f;
  q = q * z - 7.37332916720468e-03f;
  q = q * z - 1.42647390514189e-02f;
  const float y = x * p / q;
  return v != v ? v : y;
}

// double keeps libm (f64 elementwise ops are rare and not the hot path)
GML_INLINE double vexp(double x) { return std::exp(x); }
GML_INLINE double vtanh(double x) { return std::tanh(x); }
GML_INLINE double verf(double x) { return std::erf(x); }

// x * sigmoid(x) and friends, written once so fused loops stay one expression
template <class T>
GML_INLINE T sigmoid(T x) { return T(1) / (T(1) + vexp(-x)); }
// 0.5 x (1 + tanh(u)) == x sigmoid(2u): one exp, no cancellation for large |u|
template <class T>
GML_INLINE T gelu_tanh(T x) {
  const T u = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
  return x / (T(1) + vexp(T(-2) * u));
}
template <class T>
GML_INLINE T gelu_erf(T x) { return x * T(0.5) * (T(1) + verf(x * T(0.7071067811865476))); }

// ---------------------------------------------------------------- f16 / bf16

// 16-bit floats are stored as their bits and computed in float: each op widens its
// operands to f32, computes and rounds its result back (round to nearest even), as
// torch does on CPU. Fused loops round every member's result, so a gml.fusion gives
// the same values as its ops one by one. Matmul, attention, convolution, norms,
// reductions and pooling widen whole operands (`widen`) for their f32 kernels and
// round the result tensor back (`narrow`).
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

GML_INLINE float f32(bf16 x) { return __builtin_bit_cast(float, uint32_t(x.bits) << 16); }
GML_INLINE bf16 to_bf16(float x) {  // round to nearest even; NaN -> 0x7fc0 (as torch)
  const uint32_t u = __builtin_bit_cast(uint32_t, x);
  const uint16_t r = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return bf16{x != x ? uint16_t(0x7fc0) : r};
}
#if defined(__FLT16_MAX__) && !defined(GML_SOFT_F16)
// the compiler's _Float16 (F16C's vcvtph2ps/vcvtps2ph with -march=native)
GML_INLINE float f32(f16 x) { return float(__builtin_bit_cast(_Float16, x.bits)); }
GML_INLINE f16 to_f16(float x) { return f16{__builtin_bit_cast(uint16_t, _Float16(x))}; }
#else
GML_INLINE float f32(f16 x) {  // exact: the float multiply rebiases normals and subnormals
  const uint32_t em = uint32_t(x.bits & 0x7fffu), sign = uint32_t(x.bits & 0x8000u) << 16;
  float f = __builtin_bit_cast(float, em << 13) * 0x1p112f;
  if (em >= 0x7c00u) f = __builtin_bit_cast(float, (em << 13) | 0x7f800000u);  // inf, nan
  return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, f) | sign);
}
GML_INLINE f16 to_f16(float x) {  // round to nearest even, overflow to inf
  uint32_t f = __builtin_bit_cast(uint32_t, x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= (143u << 23)) {  // 2^16 and above: inf (or nan)
    o = f > (255u << 23) ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {  // below 2^-14: a subnormal, rounded by a float add
    const uint32_t magic = 126u << 23;
    o = uint16_t(__builtin_bit_cast(uint32_t, __builtin_bit_cast(float, f) +
                                                  __builtin_bit_cast(float, magic)) -
                 magic);
  } else {
    f += 0xc8000fffu + ((f >> 13) & 1u);  // rebias ((15 - 127) << 23) and round
    o = uint16_t(f >> 13);
  }
  return f16{uint16_t(o | (sign >> 16))};
}
#endif
GML_INLINE float f32(float x) { return x; }

template <class H>
GML_INLINE H to_half(float x) {
  if constexpr (std::is_same_v<H, bf16>) return to_bf16(x);
  else return to_f16(x);
}
// x rounded to H's precision, kept in float (a fused loop's intermediate values)
template <class H>
GML_INLINE float rounded(float x) { return f32(to_half<H>(x)); }

// A tensor as f32 for the float kernels (a float tensor is shared, not copied).
inline Tensor<float> widen(const Tensor<float>& x) { return x; }
template <class H, class = std::enable_if_t<is_half<H>::value>>
Tensor<float> widen(const Tensor<H>& x) {
  Tensor<float> y = empty<float>(x.shape);
  const int64_t n = x.shape.numel();
  parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) y.data[i] = f32(x.data[i]);
  });
  return y;
}
// An f32 kernel's result rounded to H.
template <class H>
Tensor<H> narrow(const Tensor<float>& x) {
  Tensor<H> y = empty<H>(x.shape);
  const int64_t n = x.shape.numel();
  parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) y.data[i] = to_half<H>(x.data[i]);
  });
  return y;
}
// The address of a temporary (a widened mask), valid until the end of the statement.
template <class T>
const T* addr(const T& x) { return &x; }

// ---------------------------------------------------------------- data movement

// y[idx] = x[sum(idx * st)]: the copy behind permute and expand (they differ in `st` only).
template <class T>
Tensor<T> gather_copy(const Tensor<T>& x, const Shape& out, const int64_t* st) {
  Tensor<T> y = empty<T>(out);
  const int64_t inner = out.inner(), rows = inner ? out.numel() / inner : 0;
  const int64_t sj = out.rank ? st[out.rank - 1] : 0;
  parallel_for(rows, inner, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* src = x.data + row_offset(r, out, st);
      T* dst = y.data + r * inner;
      if (sj == 1) std::memcpy(dst, src, size_t(inner) * sizeof(T));
      else for (int64_t j = 0; j < inner; ++j) dst[j] = src[j * sj];
    }
  });
  return y;
}

template <class T>
Tensor<T> permute(const Tensor<T>& x, std::initializer_list<int> perm) {
  Shape out;
  out.rank = x.shape.rank;
  int64_t xs[MAXR], st[MAXR];
  strides(x.shape, xs);
  int i = 0;
  for (int p : perm) out.d[i] = x.shape.d[p], st[i] = xs[p], ++i;
  return gather_copy(x, out, st);
}

template <class T>
Tensor<T> expand(const Tensor<T>& x, const Shape& out) {
  int64_t st[MAXR];
  bstrides(x.shape, out, st);
  return gather_copy(x, out, st);
}

// x[..., start:end:step, ...] along `dim`; start/end are clamped like Python slices.
template <class T>
Tensor<T> slice(const Tensor<T>& x, int dim, int64_t start, int64_t end, int64_t step) {
  const int64_t n = x.shape.d[dim];
  auto clamp = [n](int64_t v) { return v < 0 ? std::max<int64_t>(v + n, 0) : std::min(v, n); };
  start = clamp(start);
  end = clamp(end);
  const int64_t len = end > start ? (end - start + step - 1) / step : 0;
  Shape out = x.shape;
  out.d[dim] = len;
  Tensor<T> y = empty<T>(out);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= x.shape.d[i];
  for (int i = dim + 1; i < x.shape.rank; ++i) inner *= x.shape.d[i];
  if (step == 1) {  // one contiguous run per outer index (a last-dim slice is not 1 row/elt)
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(y.data + o * len * inner, x.data + (o * n + start) * inner,
                  len * inner * sizeof(T));
    return y;
  }
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t k = 0; k < len; ++k)
      std::memcpy(y.data + (o * len + k) * inner, x.data + (o * n + start + k * step) * inner,
                  inner * sizeof(T));
  return y;
}

template <class T>
Tensor<T> concat(std::initializer_list<Tensor<T>> xs, int dim) {
  Shape out = xs.begin()->shape;
  out.d[dim] = 0;
  for (const auto& x : xs) out.d[dim] += x.shape.d[dim];
  Tensor<T> y = empty<T>(out);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= out.d[i];
  for (int i = dim + 1; i < out.rank; ++i) inner *= out.d[i];
  int64_t at = 0;
  for (const auto& x : xs) {
    const int64_t chunk = x.shape.d[dim] * inner;
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(y.data + o * out.d[dim] * inner + at, x.data + o * chunk, chunk * sizeof(T));
    at += chunk;
  }
  return y;
}

template <class T>
Tensor<T> full(const Shape& s, T value) {
  Tensor<T> y = empty<T>(s);
  std::fill(y.data, y.data + s.numel(), value);
  return y;
}

template <class T>
Tensor<T> arange(int64_t n, double start, double step) {
  Tensor<T> y = empty<T>(shape({n}));
  for (int64_t i = 0; i < n; ++i) y.data[i] = static_cast<T>(start + step * double(i));
  return y;
}

template <class T, class I>
Tensor<T> embedding(const Tensor<T>& w, const Tensor<I>& idx) {
  Shape out = idx.shape;
  const int64_t d = w.shape.d[1], rows = idx.shape.numel();
  out.d[out.rank++] = d;
  Tensor<T> y = empty<T>(out);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t i = int64_t(idx.data[r]);
    if (i < 0) i += w.shape.d[0];
    if (i < 0 || i >= w.shape.d[0]) fail("embedding index " + std::to_string(i) + " out of range");
    std::memcpy(y.data + r * d, w.data + i * d, d * sizeof(T));
  }
  return y;
}

template <class T, class I>
Tensor<T> gather(const Tensor<T>& x, const Tensor<I>& idx, int dim) {
  Tensor<T> y = empty<T>(idx.shape);
  int64_t xs[MAXR], is[MAXR];
  strides(x.shape, xs);
  strides(idx.shape, is);
  const int64_t n = idx.shape.numel();
  for (int64_t f = 0; f < n; ++f) {
    int64_t off = 0, rem = f;
    for (int i = 0; i < idx.shape.rank; ++i) {
      int64_t c = rem / is[i];
      rem %= is[i];
      if (i == dim) {
        c = int64_t(idx.data[f]);
        if (c < 0) c += x.shape.d[dim];
        if (c < 0 || c >= x.shape.d[dim]) fail("gather index out of range");
      }
      off += c * xs[i];
    }
    y.data[f] = x.data[off];
  }
  return y;
}

// aten.index.Tensor with integer index tensors for `dims` (numpy advanced indexing).
template <class T>
Tensor<T> index(const Tensor<T>& x, const std::vector<Tensor<int64_t>>& idx,
                const std::vector<int>& dims, int out_rank) {
  int brank = 0;
  for (const auto& t : idx) brank = std::max(brank, t.shape.rank);
  Shape b;
  b.rank = brank;
  for (int i = 0; i < brank; ++i) b.d[i] = 1;
  for (const auto& t : idx)
    for (int i = 0; i < t.shape.rank; ++i) {
      int64_t& o = b.d[brank - t.shape.rank + i];
      if (t.shape.d[i] != 1) o = t.shape.d[i];
    }
  bool adjacent = true;
  for (size_t k = 1; k < dims.size(); ++k) adjacent = adjacent && dims[k] == dims[k - 1] + 1;
  const int first = adjacent ? dims[0] : 0;
  std::vector<bool> indexed(x.shape.rank, false);
  for (int d : dims) indexed[d] = true;
  Shape out;
  std::vector<int> src_of;  // output dim -> x dim, or -1 for a broadcast index dim
  for (int i = 0; i < x.shape.rank + 1; ++i) {
    if (i == first)
      for (int k = 0; k < brank; ++k) out.d[out.rank++] = b.d[k], src_of.push_back(-1);
    if (i < x.shape.rank && !indexed[i]) out.d[out.rank++] = x.shape.d[i], src_of.push_back(i);
  }
  if (out.rank != out_rank) fail("index: unexpected result rank");
  std::vector<std::vector<int64_t>> ist(idx.size(), std::vector<int64_t>(MAXR));
  for (size_t k = 0; k < idx.size(); ++k) bstrides(idx[k].shape, b, ist[k].data());
  int64_t xs[MAXR], os[MAXR];
  strides(x.shape, xs);
  strides(out, os);
  Tensor<T> y = empty<T>(out);
  const int64_t n = out.numel();
  for (int64_t f = 0; f < n; ++f) {
    int64_t rem = f, off = 0, bc[MAXR], nb = 0;
    for (int i = 0; i < out.rank; ++i) {
      int64_t c = rem / os[i];
      rem %= os[i];
      if (src_of[i] < 0) bc[nb++] = c;
      else off += c * xs[src_of[i]];
    }
    for (size_t k = 0; k < idx.size(); ++k) {
      int64_t io = 0;
      for (int i = 0; i < brank; ++i) io += bc[i] * ist[k][i];
      int64_t c = idx[k].data[io];
      if (c < 0) c += x.shape.d[dims[k]];
      if (c < 0 || c >= x.shape.d[dims[k]]) fail("index out of range");
      off += c * xs[dims[k]];
    }
    y.data[f] = x.data[off];
  }
  return y;
}

template <class TI, class TO>
Tensor<TO> cumsum(const Tensor<TI>& x, int dim) {
  using Acc = std::conditional_t<std::is_floating_point_v<TO>, double, TO>;
  Tensor<TO> y = empty<TO>(x.shape);
  int64_t outer = 1, inner = 1, n = x.shape.d[dim];
  for (int i = 0; i < dim; ++i) outer *= x.shape.d[i];
  for (int i = dim + 1; i < x.shape.rank; ++i) inner *= x.shape.d[i];
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < inner; ++j) {
      Acc acc = 0;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t at = (o * n + k) * inner + j;
        acc += Acc(x.data[at]);
        y.data[at] = TO(acc);
      }
    }
  return y;
}

// ---------------------------------------------------------------- reductions

enum class Red { Sum, Mean, Max, Min, Any };

template <class TI, class TO>
Tensor<TO> reduce(const Tensor<TI>& x, Red kind, std::initializer_list<int> dims, bool keepdim) {
  using Acc = std::conditional_t<std::is_floating_point_v<TI>, double, int64_t>;
  bool red[MAXR] = {false};
  for (int d : dims) red[d] = true;
  if (dims.size() == 0)
    for (int i = 0; i < x.shape.rank; ++i) red[i] = true;
  Shape out, kept;
  int64_t xs[MAXR], ks[MAXR];
  strides(x.shape, xs);
  int64_t rcount = 1;
  for (int i = 0; i < x.shape.rank; ++i) {
    if (red[i]) {
      rcount *= x.shape.d[i];
      if (keepdim) out.d[out.rank++] = 1;
    } else {
      out.d[out.rank++] = x.shape.d[i];
      kept.d[kept.rank] = x.shape.d[i];
      ks[kept.rank++] = xs[i];
    }
  }
  // offsets of the reduced elements relative to each output element's base
  std::vector<int64_t> roff(rcount);
  for (int64_t r = 0; r < rcount; ++r) {
    int64_t rem = r, off = 0;
    for (int i = x.shape.rank - 1; i >= 0; --i)
      if (red[i]) off += (rem % x.shape.d[i]) * xs[i], rem /= x.shape.d[i];
    roff[r] = off;
  }
  Tensor<TO> y = empty<TO>(out);
  const int64_t n = kept.numel();
  parallel_for(n, rcount, [&](int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    int64_t base = 0, rem = o;
    for (int i = kept.rank - 1; i >= 0; --i) base += (rem % kept.d[i]) * ks[i], rem /= kept.d[i];
    const TI* p = x.data + base;
    Acc acc = 0;
    if (kind == Red::Sum || kind == Red::Mean) {
      for (int64_t r = 0; r < rcount; ++r) acc += Acc(p[roff[r]]);
      if (kind == Red::Mean) acc = acc / Acc(rcount);
    } else if (kind == Red::Any) {
      for (int64_t r = 0; r < rcount; ++r) acc = acc || (p[roff[r]] != 0);
    } else {
      if (rcount == 0) fail("max/min of an empty tensor");
      TI m = p[roff[0]];
      for (int64_t r = 1; r < rcount; ++r)
        m = kind == Red::Max ? maxnan(p[roff[r]], m) : minnan(p[roff[r]], m);
      y.data[o] = TO(m);
      continue;
    }
    y.data[o] = TO(acc);
  }
  });
  return y;
}

// ---------------------------------------------------------------- matmul

inline void sgemm1(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a,
                   int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                   float beta = 0.0f) {
#ifndef GML_NO_BLAS
  if (m == 1) {  // a matrix-vector product: GEMM would pack (copy) all of B first
    if (tb) scipy_cblas_sgemv64_(101, 111, n, k, 1.0f, b, ldb, a, ta ? lda : 1, beta, c, 1);
    else scipy_cblas_sgemv64_(101, 112, k, n, 1.0f, b, ldb, a, ta ? lda : 1, beta, c, 1);
    return;
  }
  scipy_cblas_sgemm64_(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, 1.0f, a, lda, b, ldb, beta,
                       c, ldc);
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

// What a matmul or convolution applies to its result before anyone else reads it (a
// folded bias add, batch norm and/or activation), while the block is still in cache.
enum class Act { None, Relu, GeluTanh, GeluErf };

template <class T>
GML_INLINE T activate(T v, Act act) {
  switch (act) {
    case Act::Relu: return v < T(0) ? T(0) : v;
    case Act::GeluTanh: return gelu_tanh(v);
    case Act::GeluErf: return gelu_erf(v);
    default: return v;
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
    default: break;
  }
}

// C[m,n] = op(A) op(B), then the epilogue. Large products split their columns over
// the pool, each block a single-threaded BLAS call (OpenBLAS's own threads would
// oversubscribe the cores next to ours) followed by the epilogue on that block.
inline void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c, const Epilogue& ep = {}) {
#ifndef GML_NO_BLAS
  openblas_set_num_threads_local(1);
#endif
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

// Batched a @ b with broadcast batch dims, then `bias` (over the last dim) and `act`.
// With `ta`/`tb` the stored operand holds the transpose of its last two dims (a folded
// gml.permute), which BLAS reads directly.
inline Tensor<float> matmul(const Tensor<float>& a, bool ta, const Tensor<float>& b, bool tb,
                            int out_rank, const float* bias = nullptr, Act act = Act::None) {
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
    sgemm(false, tb, nbatch * m, n, k, a.data, lda, b.data, ldb, y.data, {nullptr, nullptr, bias, act});
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
    if (nbatch * m * n * k >= 8 * PAR_MIN) ThreadPool::get().run(nbatch, one);
    else for (int64_t i = 0; i < nbatch; ++i) one(i);
  } else {
    for (int64_t i = 0; i < nbatch; ++i) one(i);
  }
  return y;
}

// ---------------------------------------------------------------- normalization

// One softmax row of n values read at stride `st`: exp'd in place into q, then scaled.
template <class T>
inline void softmax_row(const T* p, T* q, int64_t n, int64_t st, bool log) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < n; ++k) m = maxnan(p[k * st], m);
  T s = 0;
  if (log) {
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < n; ++k) s += vexp(p[k * st] - m);
    const T ls = std::log(s);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) q[k * st] = p[k * st] - m - ls;
    return;
  }
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) {
    const T e = vexp(p[k * st] - m);
    q[k * st] = e;
    s += e;
  }
  const T inv = T(1) / s;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) q[k * st] *= inv;
}

template <class T>
Tensor<T> softmax(const Tensor<T>& x, int dim, bool log) {
  Tensor<T> y = empty<T>(x.shape);
  int64_t outer = 1, inner = 1, n = x.shape.d[dim];
  for (int i = 0; i < dim; ++i) outer *= x.shape.d[i];
  for (int i = dim + 1; i < x.shape.rank; ++i) inner *= x.shape.d[i];
  parallel_for(outer * inner, 8 * n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t o = i / inner, j = i % inner;
      softmax_row(x.data + o * n * inner + j, y.data + o * n * inner + j, n, inner, log);
    }
  });
  return y;
}

template <class T>
Tensor<T> layer_norm(const Tensor<T>& x, const T* w, const T* b, int ndim, double eps) {
  Tensor<T> y = empty<T>(x.shape);
  int64_t n = 1;
  for (int i = x.shape.rank - ndim; i < x.shape.rank; ++i) n *= x.shape.d[i];
  const int64_t rows = n ? x.shape.numel() / n : 0;
  parallel_for(rows, 4 * n, [&](int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* p = x.data + r * n;
    T* q = y.data + r * n;
    double s = 0, ss = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < n; ++k) s += p[k];
    const double mean = s / double(n);
#pragma omp simd reduction(+ : ss)
    for (int64_t k = 0; k < n; ++k) ss += (p[k] - mean) * (p[k] - mean);
    const T mu = T(mean), rstd = T(1.0 / std::sqrt(ss / double(n) + eps));
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      T v = (p[k] - mu) * rstd;
      if (w) v *= w[k];
      if (b) v += b[k];
      q[k] = v;
    }
  }
  });
  return y;
}

template <class T>
Tensor<T> batch_norm(const Tensor<T>& x, const T* w, const T* b, const T* mean, const T* var,
                     double eps) {
  Tensor<T> y = empty<T>(x.shape);
  const int64_t nb = x.shape.d[0], c = x.shape.d[1];
  const int64_t inner = c ? x.shape.numel() / (nb * c) : 0;
  parallel_for(nb * c, inner, [&](int64_t i0, int64_t i1) {
    for (int64_t ic = i0; ic < i1; ++ic) {
      const int64_t i = ic / c, ch = ic % c;
      const T scale = T(w[ch] / std::sqrt(double(var[ch]) + eps));
      const T shift = b[ch] - mean[ch] * scale;
      const T* p = x.data + (i * c + ch) * inner;
      T* q = y.data + (i * c + ch) * inner;
#pragma omp simd
      for (int64_t k = 0; k < inner; ++k) q[k] = p[k] * scale + shift;
    }
  });
  return y;
}

// ---------------------------------------------------------------- attention

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
#ifndef GML_NO_BLAS
  openblas_set_num_threads_local(1);
#endif
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

// ---------------------------------------------------------------- convolution & pooling

// A batch norm (inference) after a conv, as a per-channel scale and shift applied in the
// conv's epilogue: (conv + bias - mean) * w / sqrt(var + eps) + b.
struct ChannelAffine {
  std::vector<float> mul, add;
};
inline ChannelAffine fold_batch_norm(const float* conv_bias, const float* w, const float* b,
                                     const float* mean, const float* var, double eps,
                                     int64_t c) {
  ChannelAffine f{std::vector<float>(c), std::vector<float>(c)};
  for (int64_t ch = 0; ch < c; ++ch) {
    const float scale = float(w[ch] / std::sqrt(double(var[ch]) + eps));
    f.mul[ch] = scale;
    f.add[ch] = (conv_bias ? conv_bias[ch] : 0.0f) * scale + (b[ch] - mean[ch] * scale);
  }
  return f;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// 2-d grouped convolution: im2col per image and group (rows spread over the pool), then
// one GEMM whose epilogue applies out = act(out * mul[o] + add[o]) (bias or a folded
// batch norm). A 1x1 stride-1 unpadded conv reads its input directly as the GEMM's B.
inline Tensor<float> conv2d(const Tensor<float>& x, const Tensor<float>& w, const float* mul,
                            const float* add, Act act, int sh, int sw, int ph, int pw, int dh,
                            int dw, int groups) {
  const int64_t n = x.shape.d[0], c = x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  const int64_t o = w.shape.d[0], cg = w.shape.d[1], kh = w.shape.d[2], kw = w.shape.d[3];
  if (cg * groups != c) fail("conv: input channels do not match the weight");
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t ow = (wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  const int64_t og = o / groups, kk = cg * kh * kw, p = oh * ow;
  Tensor<float> y = empty<float>(shape({n, o, oh, ow}));
  const bool direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  Tensor<float> cols = direct ? Tensor<float>() : empty<float>(shape({kk, p}));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x.data + (b * c + g * cg) * h * wd;
      if (!direct)
        parallel_for(kk, p, [&](int64_t r0, int64_t r1) {
          for (int64_t row = r0; row < r1; ++row) {
            const int64_t ci = row / (kh * kw), ki = (row / kw) % kh, kj = row % kw;
            const float* src = xg + ci * h * wd;
            float* dst = cols.data + row * p;
            // output columns whose input column is inside the image: [lo, hi)
            const int64_t off = kj * dw - pw;
            const int64_t lo = std::min(ow, std::max<int64_t>(0, ceil_div(-off, sw)));
            const int64_t hi = std::max(lo, std::min(ow, ceil_div(wd - off, sw)));
            for (int64_t yi = 0; yi < oh; ++yi, dst += ow) {
              const int64_t ii = yi * sh - ph + ki * dh;
              if (ii < 0 || ii >= h) {
                std::fill(dst, dst + ow, 0.0f);
                continue;
              }
              const float* s = src + ii * wd + off;
              std::fill(dst, dst + lo, 0.0f);
              if (sw == 1) std::memcpy(dst + lo, s + lo, size_t(hi - lo) * sizeof(float));
              else for (int64_t xj = lo; xj < hi; ++xj) dst[xj] = s[xj * sw];
              std::fill(dst + hi, dst + ow, 0.0f);
            }
          }
        });
      Epilogue ep{mul ? mul + g * og : nullptr, add ? add + g * og : nullptr, nullptr, act};
      sgemm(false, false, og, p, kk, w.data + g * og * kk, kk, direct ? xg : cols.data, p,
            y.data + (b * o + g * og) * p, ep);
    }
  return y;
}

// 2-d max/avg pooling; the avg divisor counts padding but not the ceil-mode overhang.
// One output row at a time: each kernel tap is a branch-free (vectorizable) pass over
// the output columns whose input lies inside the image.
template <class T>
Tensor<T> pool2d(const Tensor<T>& x, bool is_max, int kh, int kw, int sh, int sw, int ph, int pw,
                 int64_t oh, int64_t ow) {
  const int64_t nc = x.shape.d[0] * x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  Tensor<T> y = empty<T>(shape({x.shape.d[0], x.shape.d[1], oh, ow}));
  parallel_for(nc * oh, ow * kh * kw, [&](int64_t r0, int64_t r1) {
    for (int64_t rr = r0; rr < r1; ++rr) {
      const int64_t i = rr / oh, a = rr % oh, i0 = a * sh - ph;
      T* acc = y.data + rr * ow;
      std::fill(acc, acc + ow, is_max ? -std::numeric_limits<T>::infinity() : T(0));
      for (int64_t di = 0; di < kh; ++di) {
        const int64_t ii = i0 + di;
        if (ii < 0 || ii >= h) continue;
        for (int64_t dj = 0; dj < kw; ++dj) {
          const int64_t off = dj - pw;
          const int64_t lo = std::min(ow, std::max<int64_t>(0, ceil_div(-off, sw)));
          const int64_t hi = std::max(lo, std::min(ow, ceil_div(wd - off, sw)));
          const T* s = x.data + (i * h + ii) * wd + off;
          if (is_max) {
#pragma omp simd
            for (int64_t b = lo; b < hi; ++b) acc[b] = maxnan(s[b * sw], acc[b]);
          } else {
#pragma omp simd
            for (int64_t b = lo; b < hi; ++b) acc[b] += s[b * sw];
          }
        }
      }
      if (!is_max) {
        const int64_t ch = std::min(i0 + kh, h + ph) - i0;
        for (int64_t b = 0; b < ow; ++b) {
          const int64_t j0 = b * sw - pw, cw = std::min(j0 + kw, wd + pw) - j0;
          acc[b] /= T(ch * cw);
        }
      }
    }
  });
  return y;
}

template <class T>
Tensor<T> adaptive_avg_pool2d(const Tensor<T>& x, int64_t oh, int64_t ow) {
  const int64_t nc = x.shape.d[0] * x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  Tensor<T> y = empty<T>(shape({x.shape.d[0], x.shape.d[1], oh, ow}));
  for (int64_t i = 0; i < nc; ++i)
    for (int64_t a = 0; a < oh; ++a)
      for (int64_t b = 0; b < ow; ++b) {
        const int64_t r0 = a * h / oh, r1 = ((a + 1) * h + oh - 1) / oh;
        const int64_t c0 = b * wd / ow, c1 = ((b + 1) * wd + ow - 1) / ow;
        double acc = 0;
        for (int64_t ii = r0; ii < r1; ++ii)
          for (int64_t jj = c0; jj < c1; ++jj) acc += x.data[(i * h + ii) * wd + jj];
        y.data[(i * oh + a) * ow + b] = T(acc / double((r1 - r0) * (c1 - c0)));
      }
  return y;
}

// ---------------------------------------------------------------- profiling

// Per-op wall time, collected only when GIMLET_CPU_PROFILE is set in the environment:
// each generated op block ends with `prof.tick(i)`, charging op i the time since the
// previous tick; the totals print to stderr, slowest first, when the process exits.
struct Profile {
  const char* const* names;
  int n;
  bool on;
  int64_t runs = 0;
  std::vector<double> total;
  Profile(const char* const* names_, int n_)
      : names(names_), n(n_), on(std::getenv("GIMLET_CPU_PROFILE") != nullptr), total(n_, 0.0) {}
  ~Profile() {
    if (!on || !runs) return;
    std::vector<int> order(n);
    double sum = 0;
    for (int i = 0; i < n; ++i) order[i] = i, sum += total[i];
    std::sort(order.begin(), order.end(), [&](int a, int b) { return total[a] > total[b]; });
    std::fprintf(stderr, "gimlet cpu profile: %lld runs, %.3f ms/run\n", (long long)runs,
                 1e3 * sum / double(runs));
    for (int i : order)
      if (total[i] > 0.002 * sum)
        std::fprintf(stderr, "  %8.3f ms %5.1f%%  %s\n", 1e3 * total[i] / double(runs),
                     100.0 * total[i] / sum, names[i]);
  }
};

struct ProfileRun {
  Profile& p;
  double last = 0;
  explicit ProfileRun(Profile& p_) : p(p_) {
    if (p.on) ++p.runs, last = now();
  }
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  void tick(int i) {
    if (!p.on) return;
    const double t = now();
    p.total[i] += t - last;
    last = t;
  }
};

// Hand a result to the caller in a fresh malloc'd buffer (freed by gimlet_free).
template <class T>
void emit_output(const Tensor<T>& t, void** outputs, int64_t* out_shapes, int k) {
  const size_t bytes = size_t(std::max<int64_t>(t.shape.numel(), 1)) * sizeof(T);
  void* p = std::malloc(bytes);
  if (!p) fail("out of memory for an output");
  std::memcpy(p, t.data, size_t(t.shape.numel()) * sizeof(T));
  outputs[k] = p;
  for (int i = 0; i < t.shape.rank; ++i) out_shapes[k * MAXR + i] = t.shape.d[i];
}

}  // namespace gml

extern "C" void gimlet_free(void* p) { std::free(p); }
"""
