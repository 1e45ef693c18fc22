// f16 and bf16: 16-bit storage, f32 compute.
#pragma once
#include <cstdint>
#include <type_traits>

#include "gimlet/cpu/scalar_math.h"
#include "gimlet/cpu/tensor.h"
#include "gimlet/cpu/thread_pool.h"

namespace gml {

// 16-bit floats are stored as their bits and computed in float: each op widens its
// operands to f32, computes and rounds its result back (round to nearest even), as
// torch does on CPU. Fused loops round every member's result, so a gml.fusion gives
// the same values as its ops one by one. Matmul, attention, convolution, norms,
// reductions and pooling widen whole operands (`widen`) for their f32 kernels and
// round the result tensor back (`narrow`).
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

GML_INLINE float f32(bf16 x) { return __builtin_bit_cast(float, uint32_t(x.bits) << 16); }
GML_INLINE bf16 to_bf16(float x) {  // round to nearest even; NaN -> 0x7fc0 (as torch)
  const uint32_t u = __builtin_bit_cast(uint32_t, x);
  const uint16_t r = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return bf16{x != x ? uint16_t(0x7fc0) : r};
}
#if defined(__FLT16_MAX__) && !defined(GML_SOFT_F16)
// the compiler's _Float16 (F16C's vcvtph2ps/vcvtps2ph with -march=native)
GML_INLINE float f32(f16 x) { return float(__builtin_bit_cast(_Float16, x.bits)); }
GML_INLINE f16 to_f16(float x) { return f16{__builtin_bit_cast(uint16_t, _Float16(x))}; }
#else
GML_INLINE float f32(f16 x) {  // exact: the float multiply rebiases normals and subnormals
  const uint32_t em = uint32_t(x.bits & 0x7fffu), sign = uint32_t(x.bits & 0x8000u) << 16;
  float f = __builtin_bit_cast(float, em << 13) * 0x1p112f;
  if (em >= 0x7c00u) f = __builtin_bit_cast(float, (em << 13) | 0x7f800000u);  // inf, nan
  return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, f) | sign);
}
GML_INLINE f16 to_f16(float x) {  // round to nearest even, overflow to inf
  uint32_t f = __builtin_bit_cast(uint32_t, x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= (143u << 23)) {  // 2^16 and above: inf (or nan)
    o = f > (255u << 23) ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {  // below 2^-14: a subnormal, rounded by a float add
    const uint32_t magic = 126u << 23;
    o = uint16_t(__builtin_bit_cast(
                     uint32_t, __builtin_bit_cast(float, f) + __builtin_bit_cast(float, magic)) -
                 magic);
  } else {
    f += 0xc8000fffu + ((f >> 13) & 1u);  // rebias ((15 - 127) << 23) and round
    o = uint16_t(f >> 13);
  }
  return f16{uint16_t(o | (sign >> 16))};
}
#endif
GML_INLINE float f32(float x) { return x; }

template <class H>
GML_INLINE H to_half(float x) {
  if constexpr (std::is_same_v<H, bf16>)
    return to_bf16(x);
  else
    return to_f16(x);
}
// x rounded to H's precision, kept in float (a fused loop's intermediate values)
template <class H>
GML_INLINE float rounded(float x) {
  return f32(to_half<H>(x));
}

// A tensor as f32 for the float kernels (a float tensor is shared, not copied).
inline Tensor<float> widen(const Tensor<float>& x) { return x; }
template <class H, class = std::enable_if_t<is_half<H>::value>>
Tensor<float> widen(const Tensor<H>& x) {
  Tensor<float> y = empty<float>(x.shape);
  const int64_t n = x.shape.numel();
  parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) y.data[i] = f32(x.data[i]);
  });
  return y;
}
// An f32 kernel's result rounded to H.
template <class H>
Tensor<H> narrow(const Tensor<float>& x) {
  Tensor<H> y = empty<H>(x.shape);
  const int64_t n = x.shape.numel();
  parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) y.data[i] = to_half<H>(x.data[i]);
  });
  return y;
}
// The address of a temporary (a widened mask), valid until the end of the statement.
template <class T>
const T* addr(const T& x) {
  return &x;
}

}  // namespace gml
