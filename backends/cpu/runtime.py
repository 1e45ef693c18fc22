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
#include <memory>
#include <stdexcept>
#include <string>
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
#include <omp.h>

namespace gml {

constexpr int MAXR = 8;
constexpr int64_t PAR_MIN = 16384;  // elements below which a loop stays on one core

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

template <class T>
Tensor<T> empty(const Shape& s) {
  Tensor<T> t;
  t.shape = s;
  size_t bytes = (size_t(std::max<int64_t>(s.numel(), 1)) * sizeof(T) + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (!p) fail("out of memory allocating " + str(s));
  t.own = std::shared_ptr<void>(p, std::free);
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

// ---------------------------------------------------------------- data movement

// y[idx] = x[sum(idx * st)]: the copy behind permute and expand (they differ in `st` only).
template <class T>
Tensor<T> gather_copy(const Tensor<T>& x, const Shape& out, const int64_t* st) {
  Tensor<T> y = empty<T>(out);
  const int64_t inner = out.inner(), rows = inner ? out.numel() / inner : 0;
  const int64_t sj = out.rank ? st[out.rank - 1] : 0;
#pragma omp parallel for if (rows * inner >= PAR_MIN)
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = x.data + row_offset(r, out, st);
    T* dst = y.data + r * inner;
    for (int64_t j = 0; j < inner; ++j) dst[j] = src[j * sj];
  }
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
#pragma omp parallel for if (n * rcount >= PAR_MIN)
  for (int64_t o = 0; o < n; ++o) {
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
  return y;
}

// ---------------------------------------------------------------- matmul

inline void sgemm1(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a,
                   int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
#ifndef GML_NO_BLAS
  if (m == 1) {  // a matrix-vector product: GEMM would pack (copy) all of B first
    if (tb) scipy_cblas_sgemv64_(101, 111, n, k, 1.0f, b, ldb, a, ta ? lda : 1, 0.0f, c, 1);
    else scipy_cblas_sgemv64_(101, 112, k, n, 1.0f, b, ldb, a, ta ? lda : 1, 0.0f, c, 1);
    return;
  }
  scipy_cblas_sgemm64_(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, 1.0f, a, lda, b, ldb, 0.0f,
                       c, ldc);
#else
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0;
      for (int64_t p = 0; p < k; ++p)
        acc += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
      c[i * ldc + j] = acc;
    }
#endif
}

// C[m,n] = op(A) op(B). Large products split their columns over our OpenMP threads, each
// running a single-threaded BLAS call: OpenBLAS's own thread pool would oversubscribe the
// cores next to OpenMP (and spin badly on a shared machine).
inline void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c) {
  const int nt = omp_get_max_threads();
  if (nt <= 1 || m * n * k < (int64_t(1) << 18) || n < 32 || omp_in_parallel()) {
#ifndef GML_NO_BLAS
    openblas_set_num_threads_local(1);
#endif
    sgemm1(ta, tb, m, n, k, a, lda, b, ldb, c, n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
#ifndef GML_NO_BLAS
    openblas_set_num_threads_local(1);
#endif
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t chunk = ((n + nth - 1) / nth + 15) / 16 * 16;
    const int64_t j0 = std::min(n, t * chunk), j1 = std::min(n, j0 + chunk);
    if (j1 > j0)
      sgemm1(ta, tb, m, j1 - j0, k, a, lda, tb ? b + j0 * ldb : b + j0, ldb, c + j0, n);
  }
}

// Batched a @ b with broadcast batch dims. With `ta`/`tb` the stored operand holds the
// transpose of its last two dims (a folded gml.permute), which BLAS reads directly.
inline Tensor<float> matmul(const Tensor<float>& a, bool ta, const Tensor<float>& b, bool tb,
                            int out_rank) {
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
    sgemm(false, tb, nbatch * m, n, k, a.data, lda, b.data, ldb, y.data);
    return y;
  }
  int64_t sa[MAXR], sb[MAXR];
  bstrides(abatch, batch, sa);
  bstrides(bbatch, batch, sb);
  for (int64_t i = 0; i < nbatch; ++i) {
    int64_t oa = 0, ob = 0, rem = i;
    for (int d = batch.rank - 1; d >= 0; --d) {
      const int64_t c = rem % batch.d[d];
      rem /= batch.d[d];
      oa += c * sa[d];
      ob += c * sb[d];
    }
    sgemm(ta, tb, m, n, k, a.data + oa * m * k, lda, b.data + ob * k * n, ldb, y.data + i * m * n);
  }
  return y;
}

// ---------------------------------------------------------------- normalization

template <class T>
Tensor<T> softmax(const Tensor<T>& x, int dim, bool log) {
  Tensor<T> y = empty<T>(x.shape);
  int64_t outer = 1, inner = 1, n = x.shape.d[dim];
  for (int i = 0; i < dim; ++i) outer *= x.shape.d[i];
  for (int i = dim + 1; i < x.shape.rank; ++i) inner *= x.shape.d[i];
#pragma omp parallel for collapse(2) if (outer * inner * n >= PAR_MIN)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < inner; ++j) {
      const T* p = x.data + o * n * inner + j;
      T* q = y.data + o * n * inner + j;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t k = 0; k < n; ++k) m = maxnan(p[k * inner], m);
      T s = 0;
      for (int64_t k = 0; k < n; ++k) s += std::exp(p[k * inner] - m);
      if (log) {
        const T ls = std::log(s);
        for (int64_t k = 0; k < n; ++k) q[k * inner] = p[k * inner] - m - ls;
      } else {
        const T inv = T(1) / s;
        for (int64_t k = 0; k < n; ++k) q[k * inner] = std::exp(p[k * inner] - m) * inv;
      }
    }
  return y;
}

template <class T>
Tensor<T> layer_norm(const Tensor<T>& x, const T* w, const T* b, int ndim, double eps) {
  Tensor<T> y = empty<T>(x.shape);
  int64_t n = 1;
  for (int i = x.shape.rank - ndim; i < x.shape.rank; ++i) n *= x.shape.d[i];
  const int64_t rows = n ? x.shape.numel() / n : 0;
#pragma omp parallel for if (rows * n >= PAR_MIN)
  for (int64_t r = 0; r < rows; ++r) {
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
  return y;
}

template <class T>
Tensor<T> batch_norm(const Tensor<T>& x, const T* w, const T* b, const T* mean, const T* var,
                     double eps) {
  Tensor<T> y = empty<T>(x.shape);
  const int64_t nb = x.shape.d[0], c = x.shape.d[1];
  const int64_t inner = c ? x.shape.numel() / (nb * c) : 0;
#pragma omp parallel for collapse(2) if (x.shape.numel() >= PAR_MIN)
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      const T scale = T(w[ch] / std::sqrt(double(var[ch]) + eps));
      const T shift = b[ch] - mean[ch] * scale;
      const T* p = x.data + (i * c + ch) * inner;
      T* q = y.data + (i * c + ch) * inner;
#pragma omp simd
      for (int64_t k = 0; k < inner; ++k) q[k] = p[k] * scale + shift;
    }
  return y;
}

// ---------------------------------------------------------------- attention

// softmax(q k^T * scale + mask) v per (batch..., head, query row), fused so the score
// matrix never exists; k/v may have fewer heads (grouped-query); a fully masked row
// yields zeros (torch's "safe" softmax). `mask` is bool (true = attend) or additive.
template <class M>
Tensor<float> sdpa(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v,
                   const Tensor<M>* mask, bool causal, double scale_or_nan) {
  const int r = q.shape.rank;
  const int64_t lq = q.shape.d[r - 2], e = q.shape.d[r - 1];
  const int64_t lk = k.shape.d[r - 2], ev = v.shape.d[r - 1];
  const float scale = std::isnan(scale_or_nan) ? 1.0f / std::sqrt(float(e)) : float(scale_or_nan);
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
#pragma omp parallel
  {
    std::vector<float> s(lk);
#pragma omp for collapse(2) schedule(static)
    for (int64_t bi = 0; bi < nb; ++bi)
      for (int64_t i = 0; i < lq; ++i) {
        int64_t ko = 0, vo = 0, mo = 0, rem = bi;
        for (int d = r - 3; d >= 0; --d) {
          const int64_t c = rem % batch.d[d];
          rem /= batch.d[d];
          ko += (c / qk[d]) * ks[d];
          vo += (c / qk[d]) * vs[d];
          mo += c * ms[d];
        }
        const float* qp = q.data + (bi * lq + i) * e;
        const float* kp = k.data + ko;
        const float* vp = v.data + vo;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < lk; ++j) {
          float acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < e; ++c) acc += qp[c] * kp[j * e + c];
          acc *= scale;
          if (causal && j > i) acc = -std::numeric_limits<float>::infinity();
          if (mask) {
            const M mv = mask->data[mo + i * ms[r - 2] + j * ms[r - 1]];
            if constexpr (std::is_same_v<M, bool>) {
              if (!mv) acc = -std::numeric_limits<float>::infinity();
            } else {
              acc += float(mv);
            }
          }
          s[j] = acc;
          top = maxnan(acc, top);
        }
        float* yp = y.data + (bi * lq + i) * ev;
        for (int64_t c = 0; c < ev; ++c) yp[c] = 0;
        if (std::isinf(top) && top < 0) continue;
        float total = 0;
        for (int64_t j = 0; j < lk; ++j) total += (s[j] = std::exp(s[j] - top));
        const float inv = 1.0f / total;
        for (int64_t j = 0; j < lk; ++j) {
          const float pj = s[j] * inv;
          if (pj == 0) continue;
#pragma omp simd
          for (int64_t c = 0; c < ev; ++c) yp[c] += pj * vp[j * ev + c];
        }
      }
  }
  return y;
}

// ---------------------------------------------------------------- convolution & pooling

// 2-d grouped convolution: im2col per image and group, then one GEMM.
inline Tensor<float> conv2d(const Tensor<float>& x, const Tensor<float>& w, const float* bias,
                            int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
  const int64_t n = x.shape.d[0], c = x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  const int64_t o = w.shape.d[0], cg = w.shape.d[1], kh = w.shape.d[2], kw = w.shape.d[3];
  if (cg * groups != c) fail("conv: input channels do not match the weight");
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t ow = (wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  const int64_t og = o / groups, kk = cg * kh * kw, p = oh * ow;
  Tensor<float> y = empty<float>(shape({n, o, oh, ow}));
  std::vector<float> cols(size_t(kk * p));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t g = 0; g < groups; ++g) {
#pragma omp parallel for if (kk * p >= PAR_MIN)
      for (int64_t row = 0; row < kk; ++row) {
        const int64_t ci = row / (kh * kw), ki = (row / kw) % kh, kj = row % kw;
        const float* src = x.data + ((b * c) + g * cg + ci) * h * wd;
        float* dst = cols.data() + row * p;
        for (int64_t yi = 0; yi < oh; ++yi) {
          const int64_t ii = yi * sh - ph + ki * dh;
          for (int64_t xj = 0; xj < ow; ++xj) {
            const int64_t jj = xj * sw - pw + kj * dw;
            dst[yi * ow + xj] = (ii >= 0 && ii < h && jj >= 0 && jj < wd) ? src[ii * wd + jj] : 0.0f;
          }
        }
      }
      float* out = y.data + (b * o + g * og) * p;
      sgemm(false, false, og, p, kk, w.data + g * og * kk, kk, cols.data(), p, out);
      if (bias)
        for (int64_t oc = 0; oc < og; ++oc)
          for (int64_t q = 0; q < p; ++q) out[oc * p + q] += bias[g * og + oc];
    }
  return y;
}

// 2-d max/avg pooling; the avg divisor counts padding but not the ceil-mode overhang.
template <class T>
Tensor<T> pool2d(const Tensor<T>& x, bool is_max, int kh, int kw, int sh, int sw, int ph, int pw,
                 int64_t oh, int64_t ow) {
  const int64_t nc = x.shape.d[0] * x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  Tensor<T> y = empty<T>(shape({x.shape.d[0], x.shape.d[1], oh, ow}));
#pragma omp parallel for if (nc * oh * ow * kh * kw >= PAR_MIN)
  for (int64_t i = 0; i < nc; ++i)
    for (int64_t a = 0; a < oh; ++a)
      for (int64_t b = 0; b < ow; ++b) {
        const int64_t i0 = a * sh - ph, j0 = b * sw - pw;
        T acc = is_max ? -std::numeric_limits<T>::infinity() : T(0);
        for (int64_t di = 0; di < kh; ++di)
          for (int64_t dj = 0; dj < kw; ++dj) {
            const int64_t ii = i0 + di, jj = j0 + dj;
            if (ii < 0 || ii >= h || jj < 0 || jj >= wd) continue;
            const T v = x.data[(i * h + ii) * wd + jj];
            acc = is_max ? maxnan(v, acc) : acc + v;
          }
        if (!is_max) {
          const int64_t ch = std::min(i0 + kh, h + ph) - i0, cw = std::min(j0 + kw, wd + pw) - j0;
          acc /= T(ch * cw);
        }
        y.data[(i * oh + a) * ow + b] = acc;
      }
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
