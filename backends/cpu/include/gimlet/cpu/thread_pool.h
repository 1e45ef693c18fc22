// The CPU runtime's thread pool and `parallel_for`.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gml {

constexpr int64_t PAR_MIN = 32768;  // work (~elements) below which a loop stays on one core

// A small pool instead of OpenMP parallel regions. An OpenMP region ends in a barrier
// that waits for every thread, so on a busy machine a worker the OS has not scheduled
// yet stalls each op for up to a time slice (we measured 0.1 ms per op, a third of a
// transformer's run). Here a loop is cut into chunks that threads claim from a shared
// counter; the calling thread claims chunks too and waits only for chunks already
// claimed, so a late worker simply finds nothing left to do. Workers poll for the next
// job for 200 us (ops follow each other within microseconds), yielding so they never
// hold a core someone else could use, then sleep on a futex.
// Thread count: GIMLET_CPU_THREADS, else OMP_NUM_THREADS, else the CPUs we may run on.
//
// One pool per process (per runtime library version): it lives in the runtime's shared
// library (src/thread_pool.cpp), which every generated kernel library links.
class ThreadPool {
 public:
  static ThreadPool& get();
  int threads() const { return int(workers_.size()) + 1; }

  // fn(chunk) for chunk in [0, n), spread over the pool; returns when all are done.
  void run(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  ThreadPool();
  void work(uint64_t gen);  // claim and run chunks of job `gen` until none are left
  void loop();              // a worker: wait for the next job, then work on it

  std::vector<std::thread> workers_;
  std::mutex submit_;
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<uint64_t> slot_{0};  // job generation << 32 | next chunk (odd gen: closed)
  std::atomic<int64_t> done_{0};
  std::atomic<int32_t> wake_{0};  // futex word: bumped to wake sleeping workers
  std::atomic<int> sleepers_{0};
  static thread_local bool in_pool_;
};

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
  ThreadPool::get().run((n + step - 1) / step,
                        [&](int64_t c) { body(c * step, std::min(n, (c + 1) * step)); });
}

}  // namespace gml
