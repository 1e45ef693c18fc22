// Scalar helpers and the vectorizable float math (exp, tanh, erf, GELU, ...) that
// elementwise loops call.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace gml {

template <class T>
inline T floordiv(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if (b == 0) return 0;
    T q = a / b;
    return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
  } else {
    return a / b;
  }
}
template <class T>
inline T ipow(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    T r = 1;
    for (T i = 0; i < b; ++i) r *= a;
    return r;
  } else {
    return std::pow(a, b);
  }
}
template <class T>
inline T maxnan(T a, T b) {
  return (a != a || a > b) ? a : b;
}
template <class T>
inline T minnan(T a, T b) {
  return (a != a || a < b) ? a : b;
}

// ---------------------------------------------------------------- vectorizable math

// libm's expf/tanhf/erff are scalar calls, so a loop using them runs one element at a
// time (GELU alone was a third of a transformer's run). These float versions are plain
// inline arithmetic that GCC turns into AVX code inside `omp simd` loops; selects
// instead of branches (if-converted thanks to -fno-trapping-math). Accuracy against
// libm: exp 1 ulp, tanh 2 ulp, erf 4e-7 absolute; inf/nan behave like libm.
#define GML_INLINE inline __attribute__((always_inline))

GML_INLINE float pow2i(int32_t n) {  // 2^n for -126 <= n <= 127, built from its bits
  const int32_t bits = (n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// e^x = 2^n e^r with |r| <= ln2/2 (Cody-Waite split of ln2), Cephes's degree-6
// polynomial for e^r; 2^n applied in two halves so results near overflow/underflow
// (denormals included) come out as libm's.
GML_INLINE float vexp(float x) {
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 88.8f ? 88.8f : xc;
  const int32_t n = int32_t(xc * 1.44269504088896341f + 150.5f) - 150;  // round(x/ln2)
  const float nf = float(n);
  float r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t h = n / 2;
  const float y = p * pow2i(h) * pow2i(n - h);
  return x != x ? x : y;
}

// Cephes's odd polynomial below 0.625, else 1 - 2 / (e^2|x| + 1) with the sign of x.
GML_INLINE float vtanh(float x) {
  const float a = std::fabs(x), z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  float big = 1.0f - 2.0f / (vexp(2.0f * a) + 1.0f);
  big = x < 0.0f ? -big : big;
  return a < 0.625f ? small : big;
}

// A rational approximation x P(x^2) / Q(x^2) on [-4, 4] (Eigen's), +-1 beyond.
GML_INLINE float verf(float v) {
  float x = v < -4.0f ? -4.0f : v;
  x = x > 4.0f ? 4.0f : x;
  const float z = x * x;
  float p = -2.72614225801306e-10f;
  p = p * z + 2.77068142495902e-08f;
  p = p * z - 2.10102402082508e-06f;
  p = p * z - 5.69250639462346e-05f;
  p = p * z - 7.34990630326855e-04f;
  p = p * z - 2.95459980854025e-03f;
  p = p * z - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * z - 2.13374055278905e-04f;
  q = q * z - 1.68282697438203e-03f;
  q = q * z - 7.37332916720468e-03f;
  q = q * z - 1.42647390514189e-02f;
  const float y = x * p / q;
  return v != v ? v : y;
}

// double keeps libm (f64 elementwise ops are rare and not the hot path)
GML_INLINE double vexp(double x) { return std::exp(x); }
GML_INLINE double vtanh(double x) { return std::tanh(x); }
GML_INLINE double verf(double x) { return std::erf(x); }

// x * sigmoid(x) and friends, written once so fused loops stay one expression
template <class T>
GML_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}
// 0.5 x (1 + tanh(u)) == x sigmoid(2u): one exp, no cancellation for large |u|
template <class T>
GML_INLINE T gelu_tanh(T x) {
  const T u = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
  return x / (T(1) + vexp(T(-2) * u));
}
template <class T>
GML_INLINE T gelu_erf(T x) {
  return x * T(0.5) * (T(1) + verf(x * T(0.7071067811865476)));
}

}  // namespace gml
