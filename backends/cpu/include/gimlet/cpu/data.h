// Data movement (permute, expand, slice, concat, gathers, indexing, cumsum) and
// reductions over contiguous tensors.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "gimlet/cpu/scalar_math.h"
#include "gimlet/cpu/tensor.h"
#include "gimlet/cpu/thread_pool.h"

namespace gml {

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
      if (sj == 1)
        std::memcpy(dst, src, size_t(inner) * sizeof(T));
      else
        for (int64_t j = 0; j < inner; ++j) dst[j] = src[j * sj];
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
      if (src_of[i] < 0)
        bc[nb++] = c;
      else
        off += c * xs[src_of[i]];
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

// Reductions

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
  bool contiguous = true;  // the reduced elements are one run (the trailing dims)
  for (int64_t r = 0; r < rcount && contiguous; ++r) contiguous = roff[r] == r;
  Tensor<TO> y = empty<TO>(out);
  const int64_t n = kept.numel();
  parallel_for(n, rcount, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      int64_t base = 0, rem = o;
      for (int i = kept.rank - 1; i >= 0; --i) base += (rem % kept.d[i]) * ks[i], rem /= kept.d[i];
      const TI* p = x.data + base;
      Acc acc = 0;
      if ((kind == Red::Sum || kind == Red::Mean) && contiguous) {  // e.g. a global pool
#pragma omp simd reduction(+ : acc)
        for (int64_t r = 0; r < rcount; ++r) acc += Acc(p[r]);
        if (kind == Red::Mean) acc = acc / Acc(rcount);
      } else if (kind == Red::Sum || kind == Red::Mean) {
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

}  // namespace gml
