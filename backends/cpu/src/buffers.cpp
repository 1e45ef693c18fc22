// The process's buffer pool (see tensor.h) and the C ABI's `gimlet_free`.
#include <atomic>
#include <cstdlib>

#include "gimlet/cpu/tensor.h"

namespace gml {

static std::atomic<uint64_t> generation{0};
uint64_t weights_generation() { return generation.load(std::memory_order_acquire); }

Pool& Pool::get() {
  static Pool* pool = new Pool();  // never destroyed: buffers may outlive static teardown
  return *pool;
}

void* Pool::take(size_t bytes) {
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

void Pool::give(void* p) {
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

}  // namespace gml

// Outputs are malloc'd by `gml::emit_output`; the caller hands them back here.
extern "C" void gimlet_free(void* p) { std::free(p); }

// The caller's weights may be new: kernels that cache packed weights must repack.
extern "C" void gimlet_weights_changed() {
  gml::generation.fetch_add(1, std::memory_order_acq_rel);
}
