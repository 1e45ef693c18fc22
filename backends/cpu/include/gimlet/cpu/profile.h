// Per-op profiling (GIMLET_CPU_PROFILE) and handing results to the caller.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gimlet/cpu/tensor.h"

namespace gml {

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
  ~Profile();  // prints the totals (src/profile.cpp)
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
