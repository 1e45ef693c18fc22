// The per-op profile's report, printed when a kernel library is unloaded (process exit).
#include "gimlet/cpu/profile.h"

#include <algorithm>
#include <cstdio>

namespace gml {

Profile::~Profile() {
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

}  // namespace gml
