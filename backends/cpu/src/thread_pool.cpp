// The process's thread pool (see thread_pool.h for why it is not OpenMP).
#include "gimlet/cpu/thread_pool.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdlib>

namespace gml {

thread_local bool ThreadPool::in_pool_ = false;

ThreadPool& ThreadPool::get() {
  static ThreadPool* pool = new ThreadPool();  // never destroyed: workers run until exit
  return *pool;
}

ThreadPool::ThreadPool() {
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

void ThreadPool::run(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (n == 1 || workers_.empty() || in_pool_) {
    for (int64_t c = 0; c < n; ++c) fn(c);
    return;
  }
  std::lock_guard<std::mutex> lock(submit_);  // one job at a time (callers may be threads)
  // Close the last job before touching fn_/n_: the slot goes to an odd ("closed")
  // generation first. Otherwise a worker that read the last job's exhausted slot
  // (gen, n_old) and then this job's larger n_ could claim (gen, n_old) before the new
  // generation is out: it ran this job's chunks from n_old on a second time and counted
  // them, so run() could return while a chunk still ran on the caller's dead frame
  // (tests/test_cpu_thread_pool.py). Now such a claim's compare-exchange fails: the
  // slot changed before n_ did.
  const uint64_t gen = (slot_.load(std::memory_order_relaxed) >> 32) + 2;  // even: open
  slot_.store((gen - 1) << 32, std::memory_order_seq_cst);
  fn_ = &fn;
  n_ = n;
  done_.store(0, std::memory_order_relaxed);
  slot_.store(gen << 32, std::memory_order_release);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    wake_.fetch_add(1, std::memory_order_seq_cst);
    syscall(SYS_futex, &wake_, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
  }
  in_pool_ = true;
  work(gen);
  in_pool_ = false;
  for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins)
    if (spins > 1000) std::this_thread::yield();
}

// Claim and run chunks of job `gen` until none are left (or a newer job started).
void ThreadPool::work(uint64_t gen) {
  uint64_t v = slot_.load(std::memory_order_acquire);
  while ((v >> 32) == gen && int64_t(uint32_t(v)) < n_) {
    if (!slot_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;
    // fn_/n_ stay put until every chunk is done
    (*fn_.load(std::memory_order_relaxed))(int64_t(uint32_t(v)));
    done_.fetch_add(1, std::memory_order_release);
    v = slot_.load(std::memory_order_acquire);
  }
}

void ThreadPool::loop() {
  in_pool_ = true;
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = slot_.load(std::memory_order_acquire) >> 32;
    const auto start = std::chrono::steady_clock::now();
    // wait for an open (even) generation newer than the last one worked on
    for (int spins = 0; gen == seen || (gen & 1); ++spins) {
      if ((spins & 255) == 255 &&
          std::chrono::steady_clock::now() - start > std::chrono::microseconds(200)) {
        const int32_t ticket = wake_.load(std::memory_order_seq_cst);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        const uint64_t now = slot_.load(std::memory_order_seq_cst) >> 32;
        if (now == seen || (now & 1))  // run() wakes sleepers after it opens the job
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

}  // namespace gml
