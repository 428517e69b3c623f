// Element formats of token rows for the permutation kernels: how an element is stored,
// the type the arithmetic runs in, and the conversions between them. Shared by the CPU
// loops and the CUDA kernels, so both round every value the same way.
//
// Note [One rounding for CPU and GPU]
// unpermute_tokens sums w[i] * rows[i] over a token's slots in ascending slot order, each
// product and each sum rounded to the accumulation type (float, or double for float64
// rows), starting from +0, and rounds the sum once to the row type (round to nearest
// even). The CUDA kernels spell the product and the sum with the explicitly rounded
// intrinsics (__fmul_rn / __fadd_rn) so that nvcc does not contract them into an FMA; the
// CPU build targets baseline x86-64, which has no FMA to contract into. So the forward
// results and grad_rows agree bit for bit between the devices; only grad_weights (a dot
// product, whose summation order follows each device's parallel layout) may differ in the
// last bits.
#pragma once

#include <cstdint>

#include "kernels/permute/permute_types.h"
// bits_to_float, float_to_bits, SWITCHYARD_HOST_DEVICE / _FORCE_INLINE
#include "kernels/routing/routing_math.h"

namespace switchyard::kernels {

// float -> bfloat16 bits, rounded to nearest even; every NaN becomes the quiet NaN 0x7fc0
// (what torch produces). Branch-free so that the CPU loops vectorize.
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

// All-ones when cond holds, else 0: selects written as masks, which GCC vectorizes (it
// turns the equivalent ?: chains around floating-point operations into branches).
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE uint32_t mask_if(bool cond) {
  return 0u - static_cast<uint32_t>(cond);
}
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE uint32_t select_bits(uint32_t mask, uint32_t a,
                                                                    uint32_t b) {
  return (a & mask) | (b & ~mask);
}

// float -> IEEE binary16 bits, rounded to nearest even (subnormals, overflow to infinity,
// NaN -> quiet NaN with the sign kept, as torch does). Branch-free: every case is computed
// and the right one selected.
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  // |f| >= 2^-14 (a normal half): drop 13 mantissa bits with round-to-nearest-even, then
  // move the exponent from float's bias (127) to half's (15). A carry out of the mantissa
  // correctly bumps the exponent.
  const uint32_t normal = ((a + 0xfffu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
  // |f| < 2^-14: the result is a multiple of 2^-24. Adding 0.5f (whose ulp is 2^-24) makes
  // the float unit do that rounding; the difference of the bit patterns is the half's
  // mantissa (1024 = the smallest normal when the value rounds up to it).
  const uint32_t subnormal = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
  uint32_t h = select_bits(mask_if(a >= 0x38800000u), normal, subnormal);
  h = select_bits(mask_if(a >= 0x477ff000u), 0x7c00u, h);  // >= 65520: infinity
  h = select_bits(mask_if(a > 0x7f800000u), 0x7e00u, h);   // NaN
  return static_cast<uint16_t>(sign | h);
}

// IEEE binary16 bits -> float, exact for every input. Unlike routing_math.h's
// half_bits_to_float it has no branches, so the CPU loops over float16 rows vectorize.
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE float half_bits_to_float_branchless(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;  // exponent and mantissa
  // normal: shift into place and move the exponent from bias 15 to bias 127 (+112 << 23);
  // infinity / NaN: add as much again, which lands on exponent 255 with the mantissa kept
  const uint32_t normal = (em << 13) + (112u << 23) + (mask_if(em >= 0x7c00u) & (112u << 23));
  // zero / subnormal: mantissa * 2^-24, exact in float
  const float small = static_cast<float>(static_cast<int32_t>(em)) * 5.9604644775390625e-08f;
  return bits_to_float(sign | select_bits(mask_if(em < 0x0400u), float_to_bits(small), normal));
}

// A row format: storage type, accumulation type, load (storage -> acc) and store
// (acc -> storage, rounded to nearest even).
struct RowFloat32 {
  using storage_t = float;
  using acc_t = float;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static float load(float v) { return v; }
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static float store(float v) { return v; }
};
struct RowFloat64 {
  using storage_t = double;
  using acc_t = double;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static double load(double v) { return v; }
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static double store(double v) { return v; }
};
struct RowBFloat16 {
  using storage_t = uint16_t;
  using acc_t = float;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static float load(uint16_t b) {
    return bits_to_float(static_cast<uint32_t>(b) << 16);
  }
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static uint16_t store(float v) {
    return float_to_bfloat16_bits(v);
  }
};
struct RowFloat16 {
  using storage_t = uint16_t;
  using acc_t = float;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static float load(uint16_t h) {
    return half_bits_to_float_branchless(h);
  }
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static uint16_t store(float v) {
    return float_to_half_bits(v);
  }
};

// acc + w * v with both operations rounded (see Note [One rounding for CPU and GPU]).
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE float mul_add_rn(float acc, float w, float v) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(acc, __fmul_rn(w, v));
#else
  return acc + w * v;
#endif
}
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE double mul_add_rn(double acc, double w, double v) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(acc, __dmul_rn(w, v));
#else
  return acc + w * v;
#endif
}
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// Calls f(RowFormat{}) for the format of `type`.
template <class F>
inline void dispatch_row_type(RowType type, F&& f) {
  switch (type) {
    case RowType::kFloat32: f(RowFloat32{}); return;
    case RowType::kFloat64: f(RowFloat64{}); return;
    case RowType::kBFloat16: f(RowBFloat16{}); return;
    case RowType::kFloat16: f(RowFloat16{}); return;
  }
}

}  // namespace switchyard::kernels
