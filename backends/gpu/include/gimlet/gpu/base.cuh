// The base of gimlet's GPU kernel header (gml_gpu.cuh): the standard and vendor headers, the
// portability block (the only vendor names: CUDA's, or HIP's under -DGML_HIP), the host
// context a segment gets from the runtime (Ctx), 16-bit floats and their loads and stores,
// and the scalar helpers shared with the CPU backend.
#pragma once

#include <stdint.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

// ---------------------------------------------------------------- portability
#ifdef GML_HIP
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#define GML_WARP 64
typedef hipStream_t gmlStream_t;
typedef hipError_t gmlError_t;
#define gmlSuccess hipSuccess
#define gmlGetLastError hipGetLastError
#define gmlMemsetAsync hipMemsetAsync
#define gmlMemcpyAsync hipMemcpyAsync
#define gmlMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define GML_SHFL_XOR(v, m) __shfl_xor((v), (m))
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define GML_WARP 32
typedef cudaStream_t gmlStream_t;
typedef cudaError_t gmlError_t;
#define gmlSuccess cudaSuccess
#define gmlGetLastError cudaGetLastError
#define gmlMemsetAsync cudaMemsetAsync
#define gmlMemcpyAsync cudaMemcpyAsync
#define gmlMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define GML_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#endif

#define GML_HD __host__ __device__ __forceinline__
#define GML_D __device__ __forceinline__

namespace gml {

// ---------------------------------------------------------------- the host context
// What the runtime library (backends/<vendor>/runtime/) hands a segment: its vendor
// BLAS behind one function, so generated code never includes cuBLAS or hipBLAS.
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

struct Ctx {
  // Row-major C[b] = A[b] @ B[b] (m x k times k x n), batch strides in elements;
  // trans_b: B is stored n x k. C may be f32 while A and B are 16-bit (attention
  // scores). Returns 0 or a vendor status code.
  int (*gemm)(const Ctx* ctx, gmlStream_t stream, DType ab, DType c, bool trans_b, int64_t m,
              int64_t n, int64_t k, const void* a, int64_t lda, int64_t stride_a, const void* b,
              int64_t ldb, int64_t stride_b, void* c_ptr, int64_t ldc, int64_t stride_c,
              int64_t batch, float alpha);
  // Row-major D = act(X @ W^T + bias) + R (X m x k, W n x k as a Linear stores it,
  // D and R with rows ldd apart) in one vendor GEMM with a fused epilogue: bias (n
  // elements) and R may be null, gelu is the tanh approximation (cuBLASLt's GELU), and
  // R only comes without gelu (the vendor adds it before the activation).
  int (*gemm_epilogue)(const Ctx* ctx, gmlStream_t stream, DType t, int64_t m, int64_t n, int64_t k,
                       const void* x, const void* w, void* d, int64_t ldd, const void* bias,
                       bool gelu, const void* r);
  void* state;  // the runtime's handles (BLAS handle, workspace)
  // A word of device memory for a persistent chain's grid barrier (gml::launch_chain),
  // zeroed once. Null where the runtime has none: then each kernel runs on its own.
  unsigned* barrier;
};

// ---------------------------------------------------------------- 16-bit floats
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};
template <class T>
struct is_half : std::false_type {};
template <>
struct is_half<bf16> : std::true_type {};
template <>
struct is_half<f16> : std::true_type {};

#ifdef GML_HIP
// bf16 by its bits (ROCm 5.x has no hip_bf16.h): the high half of a float, rounded to
// nearest even; a NaN stays a (quiet) NaN
GML_HD float f32(bf16 x) {
  const uint32_t u = uint32_t(x.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
GML_HD uint16_t bf16_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#else
GML_HD float f32(bf16 x) { return __bfloat162float(__ushort_as_bfloat16(x.bits)); }
GML_HD uint16_t bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16(x)); }
#endif
GML_HD float f32(f16 x) { return __half2float(__ushort_as_half(x.bits)); }
template <class T>
GML_HD T f32(T x) {
  return x;
}
template <class H>
GML_HD H to_half(float x) {
  if constexpr (std::is_same_v<H, bf16>)
    return bf16{bf16_bits(x)};
  else
    return f16{__half_as_ushort(__float2half(x))};
}
// x rounded to H's precision and kept in float (a fused kernel's intermediate values)
template <class H>
GML_HD float rounded(float x) {
  return f32(to_half<H>(x));
}
// load as the compute type / store from it
template <class T>
GML_HD auto load(const T* p) {
  if constexpr (is_half<T>::value)
    return f32(*p);
  else
    return *p;
}
template <class T, class V>
GML_HD void store(T* p, V v) {
  if constexpr (is_half<T>::value)
    *p = to_half<T>(float(v));
  else
    *p = static_cast<T>(v);
}

// ---------------------------------------------------------------- scalar helpers
// Same names as the CPU runtime's, so both backends share one table of scalar
// expressions (backends/cpu/codegen.py: _UNARY, _BINARY, _scalar_expr).
template <class T>
GML_HD T floordiv(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if (b == 0) return 0;
    T q = a / b;
    return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
  } else {
    return a / b;
  }
}
template <class T>
GML_HD T ipow(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    T r = 1;
    for (T i = 0; i < b; ++i) r *= a;
    return r;
  } else {
    return std::pow(a, b);
  }
}
template <class T>
GML_HD T maxnan(T a, T b) {
  return (a != a || a > b) ? a : b;
}
template <class T>
GML_HD T minnan(T a, T b) {
  return (a != a || a < b) ? a : b;
}
GML_HD float vexp(float x) { return expf(x); }
GML_HD double vexp(double x) { return exp(x); }
GML_HD float vtanh(float x) { return tanhf(x); }
GML_HD double vtanh(double x) { return tanh(x); }
GML_HD float verf(float x) { return erff(x); }
GML_HD double verf(double x) { return erf(x); }
template <class T>
GML_HD T sigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}
template <class T>
GML_HD T gelu_tanh(T x) {
  const T u = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
  return x / (T(1) + vexp(T(-2) * u));
}
template <class T>
GML_HD T gelu_erf(T x) {
  return x * T(0.5) * (T(1) + verf(x * T(0.7071067811865476)));
}

}  // namespace gml
