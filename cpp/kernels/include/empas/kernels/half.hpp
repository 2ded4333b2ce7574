// fp16 / bf16 <-> fp32 conversions in portable C++ (no intrinsics), round to
// nearest even, with subnormals, infinities and NaN payloads handled. Written
// branch-light so that loops over them vectorize.
#pragma once

#include <cstdint>
#include <cstring>

namespace empas::kernels {

/// IEEE 754 binary16, stored as its bit pattern (layout-compatible with
/// c10::Half and CUDA __half).
struct Half {
  uint16_t bits;
};
/// bfloat16, stored as its bit pattern (layout-compatible with c10::BFloat16).
struct BFloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// binary16 bits -> fp32, exact (every binary16 value is an fp32 value; NaN
/// payloads are kept, shifted into the top of the fp32 mantissa). Branch-free:
/// all cases are computed and one is selected, so loops vectorize.
inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t o = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent and mantissa in place
  const uint32_t exp = o & 0x0f800000u;
  const uint32_t normal = o + (112u << 23);  // rebias the exponent by 127 - 15
  const uint32_t infnan = o + (224u << 23);  // exponent 31 -> 255
  // zero / subnormal: 2^-14 * (1 + m / 1024) - 2^-14 = m * 2^-24, exact
  const uint32_t sub = float_bits(bits_float(o + (113u << 23)) - bits_float(113u << 23));
  const uint32_t r = exp == 0x0f800000u ? infnan : (exp == 0 ? sub : normal);
  return bits_float(r | sign);
}

/// fp32 -> binary16 bits, round to nearest even; overflow gives +-inf, NaN
/// stays NaN (payload kept where it fits, else the quiet bit). Branch-free.
inline uint16_t float_to_fp16(float f) {
  const uint32_t xs = float_bits(f);
  const uint32_t sign = (xs >> 16) & 0x8000u;
  const uint32_t x = xs & 0x7fffffffu;
  const uint32_t payload = (x >> 13) & 0x3ffu;
  const uint32_t nan = 0x7c00u | (payload != 0 ? payload : 0x200u);
  // < 2^-14 (subnormal or zero in binary16): adding 0.5 puts the binary16
  // subnormal step 2^-24 at the last fp32 mantissa bit, so the fp32 addition
  // rounds to nearest even for us.
  const uint32_t sub = float_bits(bits_float(x) + 0.5f) - 0x3f000000u;
  // normal: rebias by (15 - 127) << 23 (= 0xc8000000 mod 2^32) and round the
  // 13 dropped mantissa bits to nearest even; a carry may give inf, correctly.
  const uint32_t normal = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
  const uint32_t big = x > 0x7f800000u ? nan : 0x7c00u;  // >= 65536 rounds to inf
  const uint32_t o = x >= 0x47800000u ? big : (x < 0x38800000u ? sub : normal);
  return static_cast<uint16_t>(o | sign);
}

/// bfloat16 bits -> fp32, exact.
inline float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

/// fp32 -> bfloat16 bits, round to nearest even; NaN stays NaN (payload kept
/// where it fits, else the quiet bit).
inline uint16_t float_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t hi = x >> 16;
  const uint32_t nan = (hi & 0x7fu) != 0 ? hi : (hi | 0x40u);
  const uint32_t rounded = (x + 0x7fffu + (hi & 1u)) >> 16;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

/// fp32 rounded to the nearest binary16 value and back: how a scale stored as
/// fp16 reads back.
inline float round_to_fp16(float f) { return fp16_to_float(float_to_fp16(f)); }

}  // namespace empas::kernels
