// Tensors (contiguous row-major buffers with shared ownership), shapes, broadcasting
// and the buffer pool every kernel allocates from.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace gml {

constexpr int MAXR = 8;  // the highest tensor rank

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
// most twice it. The pool holds at most POOL_MAX bytes of free blocks. One pool per
// process, in the runtime library (src/buffers.cpp).
class Pool {
 public:
  static Pool& get();
  void* take(size_t bytes);  // nullptr when out of memory
  void give(void* p);

 private:
  static constexpr size_t POOL_MAX = size_t(1) << 30;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> sizes_;  // blocks in use -> their capacity
  size_t held_ = 0;
};

// Bumped by `gimlet_weights_changed()`, which the caller invokes whenever it passes a new
// table of weights: kernels that keep weights repacked (oneDNN convolution) repack them.
uint64_t weights_generation();

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
      if (o != 1)
        fail("cannot broadcast " + str(s) + " in a result of rank " + std::to_string(rank));
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

}  // namespace gml
