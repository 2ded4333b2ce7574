// Internal to cpp/kernels (not installed): the per-group quantizer shared by
// the fake-quant kernels (fake_quant_cpu.cpp) and the packing kernels
// (pack_cpu.cpp), so that both choose the same scale, bounds and clipping
// ratio bit for bit. Everything is always_inline, so each caller gets a copy
// compiled for its own target ISA.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "empas/kernels/fake_quant.hpp"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define EMPAS_X86_DISPATCH 1
#include <immintrin.h>
#endif

#ifndef EMPAS_INLINE
#define EMPAS_INLINE inline __attribute__((always_inline))
#endif

namespace empas::kernels::detail {

constexpr int kLanes = 16;  // independent accumulators: vectorizable reductions without reassociation

/// How one group is written: quantized with (scale, [qlo, qhi]), all zeros, or
/// copied unchanged.
enum class Mode { kQuant, kZeros, kCopy };
struct GroupQ {
  Mode mode;
  float scale;
  float qlo, qhi;  // clamp bounds of w / scale, integers
};

EMPAS_INLINE float to_f(float v) { return v; }
EMPAS_INLINE float to_f(Half v) { return fp16_to_float(v.bits); }
EMPAS_INLINE float to_f(BFloat16 v) { return bf16_to_float(v.bits); }
template <class T>
EMPAS_INLINE T from_f(float v);
template <>
EMPAS_INLINE float from_f<float>(float v) {
  return v;
}
template <>
EMPAS_INLINE Half from_f<Half>(float v) {
  return Half{float_to_fp16(v)};
}
template <>
EMPAS_INLINE BFloat16 from_f<BFloat16>(float v) {
  return BFloat16{float_to_bf16(v)};
}

/// rint for |t| <= 2^22 in the default rounding mode: adding 1.5 * 2^23 leaves
/// no fraction bits, so the FPU rounds half to even. Zero signs are not kept
/// (the callers make zeros +0.0 anyway).
EMPAS_INLINE float rint_small(float t) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (t + kMagic) - kMagic;
}

/// The integer level of w: rint(clamp(w / scale, qlo, qhi)), in [qlo, qhi].
/// The packed code of w is this minus qlo (in [0, 2^bits)).
EMPAS_INLINE float quant_index(float w, float scale, float qlo, float qhi) {
  float t = w / scale;
  t = t < qlo ? qlo : t;
  t = t > qhi ? qhi : t;
  return rint_small(t);
}

/// The dequantized value of w: rint(clamp(w / scale, qlo, qhi)) * scale, +0.0
/// for zero. Clamping before rounding equals rounding before clamping because
/// the bounds are integers.
EMPAS_INLINE float deq(float w, float scale, float qlo, float qhi) {
  return quant_index(w, scale, qlo, qhi) * scale + 0.0f;
}

struct Cfg {
  int bits;
  bool symmetric;
  bool clip;
  int64_t cols;
  int64_t gs;      // elements per group (last group of a row may be shorter)
  int64_t groups;  // groups per row
};

/// The per-row group layout of a [rows, cols] weight under p.
inline Cfg make_cfg(const FakeQuantParams& p, int64_t cols) {
  Cfg c;
  c.bits = p.bits;
  c.symmetric = p.symmetric;
  c.clip = p.clip_search;
  c.cols = cols;
  c.gs = effective_group_size(p.group_size, cols);
  c.groups = (cols + c.gs - 1) / c.gs;
  return c;
}

/// Scale and bounds for ratio r. Returns false on fp16 scale overflow.
EMPAS_INLINE bool make_q(const Cfg& c, float m, float lo, float hi, float r, GroupQ* g) {
  if (c.symmetric) {
    const float half = static_cast<float>(1 << (c.bits - 1));
    const float d = round_to_fp16((m * r) / -half);
    if (!std::isfinite(d)) return false;
    if (d == 0.0f) {
      *g = GroupQ{Mode::kZeros, 0.0f, 0.0f, 0.0f};
      return true;
    }
    *g = GroupQ{Mode::kQuant, d, -half, half - 1.0f};
    return true;
  }
  const float qmax = static_cast<float>((1 << c.bits) - 1);
  const float lor = lo * r, hir = hi * r;
  const float s = round_to_fp16((hir - lor) / qmax);
  if (!std::isfinite(s)) return false;
  if (s == 0.0f) {
    *g = GroupQ{Mode::kCopy, 0.0f, 0.0f, 0.0f};
    return true;
  }
  float z = std::nearbyint(-lor / s);
  z = std::min(std::max(z, 0.0f), qmax);
  *g = GroupQ{Mode::kQuant, s, -z, qmax - z};
  return true;
}

/// Sum of squared errors of the group under q, in double.
EMPAS_INLINE double group_error(const float* __restrict x, int64_t n, const GroupQ& q) {
  if (q.mode == Mode::kCopy) return 0.0;
  double acc[kLanes] = {};
  int64_t i = 0;
  if (q.mode == Mode::kZeros) {
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[i + l]) * x[i + l];
    for (int l = 0; i < n; ++i, ++l) acc[l] += static_cast<double>(x[i]) * x[i];
  } else {
    const float s = q.scale, a = q.qlo, b = q.qhi;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const float e = deq(x[i + l], s, a, b) - x[i + l];
        acc[l] += static_cast<double>(e) * e;
      }
    for (int l = 0; i < n; ++i, ++l) {
      const float e = deq(x[i], s, a, b) - x[i];
      acc[l] += static_cast<double>(e) * e;
    }
  }
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

/// Reduces the group: lo/hi = min/max, and m = the element of largest |x|
/// (first on ties) when symmetric; false when a value is NaN or Inf. Works on
/// keys (bits ^ (sign ? 0x7fffffff : 0), which order like the floats as signed
/// integers), where integer min/max reductions vectorize without reassociating
/// floats.
EMPAS_INLINE bool reduce(const float* __restrict x, int64_t n, bool symmetric, float* m, float* lo,
                         float* hi) {
  int32_t kmin = INT32_MAX, kmax = INT32_MIN;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = float_bits(x[i]);
    const int32_t k = static_cast<int32_t>(b ^ ((0u - (b >> 31)) >> 1));
    kmin = k < kmin ? k : kmin;
    kmax = k > kmax ? k : kmax;
  }
  // Keys at or beyond those of +-Inf are Inf or NaN.
  if (kmax >= static_cast<int32_t>(0x7f800000u) || kmin <= static_cast<int32_t>(0x807fffffu)) return false;
  const auto from_key = [](int32_t k) {
    const uint32_t u = static_cast<uint32_t>(k);
    return bits_float(u ^ ((0u - (u >> 31)) >> 1));
  };
  *lo = from_key(kmin);
  *hi = from_key(kmax);
  if (symmetric) {
    const float alo = std::fabs(*lo), ahi = std::fabs(*hi);
    if (alo != ahi || *lo == *hi) {
      *m = alo > ahi ? *lo : *hi;
    } else {  // both -a and +a occur: the first one wins (rare; scan 64 at a time)
      const uint32_t abits = float_bits(ahi);
      int64_t i = 0;
      for (; i + 64 <= n; i += 64) {
        int hits = 0;
        for (int64_t j = i; j < i + 64; ++j) hits += (float_bits(x[j]) & 0x7fffffffu) == abits;
        if (hits) break;
      }
      while ((float_bits(x[i]) & 0x7fffffffu) != abits) ++i;
      *m = x[i];
    }
  }
  return true;
}

/// Chooses the group's quantizer (with the clip search when asked). min_out,
/// when not null, receives the group's minimum.
EMPAS_INLINE Status choose(const Cfg& c, const float* __restrict x, int64_t n, GroupQ* out,
                           float* min_out = nullptr) {
  float m = 0.0f, lo = 0.0f, hi = 0.0f;
  if (!reduce(x, n, c.symmetric, &m, &lo, &hi)) return Status::kNonFinite;
  if (min_out != nullptr) *min_out = lo;
  if (!make_q(c, m, lo, hi, 1.0f, out)) return Status::kScaleOverflow;
  if (!c.clip) return Status::kOk;
  double best = group_error(x, n, *out);
  for (int k = 1; k < kClipRatios; ++k) {
    GroupQ q;
    if (!make_q(c, m, lo, hi, clip_ratio(k), &q)) return Status::kScaleOverflow;
    const double e = group_error(x, n, q);
    if (e < best) {  // strict: the largest ratio wins ties
      best = e;
      *out = q;
    }
  }
  return Status::kOk;
}

// ---- fp16 <-> fp32 for a buffer: hardware conversions (F16C, AVX-512) where
// the ISA has them, the portable ones of half.hpp otherwise. Both round to
// nearest even and keep subnormals (MXCSR's FTZ does not apply to vcvtps2ph).
enum IsaLevel : int { kIsaBaseline = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

inline void half_to_float_soft(const Half* __restrict s, float* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = fp16_to_float(s[i].bits);
}
inline void float_to_half_soft(const float* __restrict s, Half* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i].bits = float_to_fp16(s[i]);
}

#ifdef EMPAS_X86_DISPATCH
// GCC 12's AVX-512 conversion intrinsics start from _mm256_undefined_si256(),
// which -Wmaybe-uninitialized reports falsely (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
inline __attribute__((target("avx2,f16c"))) void half_to_float_f16c(const Half* __restrict s,
                                                                    float* __restrict d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = fp16_to_float(s[i].bits);
}
inline __attribute__((target("avx2,f16c"))) void float_to_half_f16c(const float* __restrict s,
                                                                    Half* __restrict d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) d[i].bits = float_to_fp16(s[i]);
}
inline __attribute__((target("avx512f"))) void half_to_float_avx512(const Half* __restrict s,
                                                                    float* __restrict d, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
  for (; i < n; ++i) d[i] = fp16_to_float(s[i].bits);
}
inline __attribute__((target("avx512f"))) void float_to_half_avx512(const float* __restrict s,
                                                                    Half* __restrict d, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(d + i),
        _mm512_cvtps_ph(_mm512_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) d[i].bits = float_to_fp16(s[i]);
}
#pragma GCC diagnostic pop
#endif

template <int kIsa>
EMPAS_INLINE void half_to_float_n(const Half* s, float* d, int64_t n) {
#ifdef EMPAS_X86_DISPATCH
  if constexpr (kIsa == kIsaAvx512) return half_to_float_avx512(s, d, n);
  if constexpr (kIsa == kIsaAvx2) return half_to_float_f16c(s, d, n);
#endif
  half_to_float_soft(s, d, n);
}
template <int kIsa>
EMPAS_INLINE void float_to_half_n(const float* s, Half* d, int64_t n) {
#ifdef EMPAS_X86_DISPATCH
  if constexpr (kIsa == kIsaAvx512) return float_to_half_avx512(s, d, n);
  if constexpr (kIsa == kIsaAvx2) return float_to_half_f16c(s, d, n);
#endif
  float_to_half_soft(s, d, n);
}

}  // namespace empas::kernels::detail
