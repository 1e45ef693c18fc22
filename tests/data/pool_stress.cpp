// Stress driver for gml::ThreadPool (tests/test_cpu_thread_pool.py): alternates 2- and
// 64-chunk jobs and checks every chunk ran once and none still runs when run() returns.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "gimlet/cpu/thread_pool.h"

static std::atomic<int> hits[64];   // how often each chunk of the current job ran
static std::atomic<int> running{0};  // chunks inside the job's function right now

int main(int argc, char** argv) {
  const double seconds = std::atof(argv[1]);
  gml::ThreadPool& pool = gml::ThreadPool::get();
  const auto start = std::chrono::steady_clock::now();
  long jobs = 0;
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  while (elapsed() < seconds) {
    for (int rep = 0; rep < 1000; ++rep, ++jobs) {
      const long n = (jobs & 1) ? 64 : 2;  // a larger job right after a smaller one
      for (auto& h : hits) h.store(0);
      pool.run(n, [](int64_t c) {
        running.fetch_add(1);
        hits[c].fetch_add(1);
        running.fetch_sub(1);
      });
      const int still = running.load();
      for (long c = 0; c < 64; ++c) {
        const int ran = hits[c].load();
        if (still || ran != (c < n ? 1 : 0)) {
          std::printf("job %ld (%ld chunks): chunk %ld ran %d times; %d still running after "
                      "run() returned\n", jobs, n, c, ran, still);
          return 1;
        }
      }
    }
  }
  std::printf("ok: %ld jobs on %d threads\n", jobs, pool.threads());
  return 0;
}
