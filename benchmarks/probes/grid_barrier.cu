// How long a grid-wide barrier takes on this GPU, by how it waits: the cost a persistent
// chain (backends/gpu/chains.py, gml::ChainSync) pays per phase instead of a kernel
// boundary. Build and run on the GPU machine:
//   nvcc -std=c++17 -arch=sm_90 -O3 -I backends/gpu/include -o /tmp/gb benchmarks/probes/grid_barrier.cu && /tmp/gb
// Prints ns per barrier for each way of waiting and blocks per SM.
#include <cooperative_groups.h>
#include <cstdio>

#include "gimlet/gpu/gml_gpu.cuh"

namespace cg = cooperative_groups;

// 0: gml::ChainSync (each warp's lane 0 watches the barrier word's top bit)
// 1: the same word, thread 0 watches, then __syncthreads
// 2: cooperative_groups::this_grid().sync()
template <int MODE>
__global__ void barriers(unsigned* bar, int n, float* sink) {
  gml::ChainSync sync{bar, gridDim.x};
  sync.start();
  float acc = 0.f;
  for (int i = 0; i < n; ++i) {
    if (MODE == 0) {
      sync.wait();
      sync.arrive();
    } else if (MODE == 1) {
      if (!sync.waited) {
        if (threadIdx.x == 0) {
          while ((*reinterpret_cast<volatile unsigned*>(bar) >> 31) != sync.flipped) {
          }
          __threadfence();
        }
        __syncthreads();
        sync.waited = true;
      }
      sync.arrive();
    } else {
      cg::this_grid().sync();
    }
    acc += float(i);
  }
  if (acc == -1.f) *sink = acc;
}

template <int MODE>
float time_it(unsigned* bar, int per_sm, int sms, int n) {
  float* sink;
  cudaMalloc(&sink, 4);
  void* args[] = {&bar, &n, &sink};
  dim3 grid(sms * per_sm), block(256);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int rep = 0; rep < 2; ++rep) {  // the first launch warms up
    cudaEventRecord(a);
    cudaLaunchCooperativeKernel((void*)barriers<MODE>, grid, block, args, 0, 0);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
  }
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) printf("error: %s\n", cudaGetErrorString(e));
  cudaFree(sink);
  return ms * 1e6f / n;
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  unsigned* bar;
  cudaMalloc(&bar, 8);
  cudaMemset(bar, 0, 8);
  const int n = 2000;
  for (int per_sm = 1; per_sm <= 3; ++per_sm) {
    printf("blocks/SM %d (%d blocks of 256): warp-watch %.0f ns, block-watch %.0f ns, cg grid.sync %.0f ns per barrier\n",
           per_sm, sms * per_sm, time_it<0>(bar, per_sm, sms, n), time_it<1>(bar, per_sm, sms, n),
           time_it<2>(bar, per_sm, sms, n));
  }
  return 0;
}
