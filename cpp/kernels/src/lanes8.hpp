// The 8-lane fp32 operations the two CPU matmul kernels (packed_matmul_cpu.cpp,
// packed_matmul_a8_cpu.cpp) share: a portable one (8 scalar lanes) and AVX2's,
// with the same lanes and the same horizontal-sum order, so that a kernel's
// portable and AVX2 paths agree bit for bit. Each kernel's V derives from one and
// adds its own integer lanes and FMA (the exact kernel's portable "fma" is a
// multiply then an add: it rounds twice, as its AVX2 path's separate mul/add).
#pragma once

#include "group_quant.hpp"

namespace empas::kernels::detail {

struct BaseF8 {
  struct F {
    float v[8];
  };
  static EMPAS_INLINE float h2f(Half h) { return fp16_to_float(h.bits); }
  static EMPAS_INLINE F zero() { return F{}; }
  static EMPAS_INLINE F set1(float s) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = s;
    return r;
  }
  static EMPAS_INLINE F loadx(const float* p) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = p[l];
    return r;
  }
  static EMPAS_INLINE F add(const F& a, const F& b) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] + b.v[l];
    return r;
  }
  static EMPAS_INLINE float hsum(const F& a) {
    return ((a.v[0] + a.v[4]) + (a.v[2] + a.v[6])) + ((a.v[1] + a.v[5]) + (a.v[3] + a.v[7]));
  }
};

#ifdef EMPAS_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
struct Avx2F8 {
  using F = __m256;
  /// F16C: exact, equal to fp16_to_float for every input (and one instruction).
  static EMPAS_INLINE float h2f(Half h) { return _cvtsh_ss(h.bits); }
  static EMPAS_INLINE F zero() { return _mm256_setzero_ps(); }
  static EMPAS_INLINE F set1(float s) { return _mm256_set1_ps(s); }
  static EMPAS_INLINE F loadx(const float* p) { return _mm256_loadu_ps(p); }
  static EMPAS_INLINE F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static EMPAS_INLINE F add(F a, F b) { return _mm256_add_ps(a, b); }
  static EMPAS_INLINE float hsum(F a) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));  // l + l+4
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));  // (0+4)+(2+6), (1+5)+(3+7)
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
};
#pragma GCC pop_options
#endif

}  // namespace empas::kernels::detail
