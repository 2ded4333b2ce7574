// CPU fused matmul with a packed weight (packed_matmul.hpp): y = x @
// dequant(W)^T (+ bias) for the decode shapes, straight from the bit stream.
//
// OpenMP over contiguous blocks of output rows; per output row o and per pass
// over up to kMR = 4 rows of x, each group's codes are decoded to exact fp32
// integers (u - z) (the magic-number trick: the bits of 2^23 + u OR-ed into a
// float, minus 2^23 + z), multiplied into per-lane fp32 accumulators against x
// (FMA), and the group's partial sums are scaled by its fp16 scale into the
// row's lane accumulators; one horizontal sum per output element at the end.
//
// Two ways to get the codes of 8 consecutive elements:
//  * fast: when every row and every group starts at an element that is a
//    multiple of 8 (in % 8 == 0 and group_size % 8 == 0), 8 codes fill exactly
//    b whole bytes of the stream, read with one (b <= 4) or two (b = 5..7)
//    little-endian 32-bit loads broadcast to the lanes and shifted by a
//    per-lane variable shift, or widened directly (b = 8). The 32-bit loads may
//    read up to 3 bytes past the 8-element block, so the last output row of the
//    matrix always takes the generic way (no read past the stream's end).
//  * generic: the row's codes are unpacked into a byte buffer first (pack_cpu's
//    decoder, any alignment), then widened 8 at a time; group tails that are not
//    a multiple of the vector width are summed by scalar code.
// AVX-512 runs 16 lanes when in and group_size are multiples of 16 (else the
// AVX2 code); the baseline ISA runs 8 scalar lanes over the generic way.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "empas/kernels/pack.hpp"
#include "empas/kernels/packed_matmul.hpp"
#include "f32_io.hpp"
#include "group_quant.hpp"
#include "lanes8.hpp"

namespace empas::kernels {
namespace {

using namespace detail;

constexpr int kMR = 4;                // rows of x per pass over a weight row
constexpr int64_t kPrefetch = 2048;   // bytes of weights prefetched ahead of the reads (split path)
constexpr float kMagic = 8388608.0f;  // 2^23: bits 0x4B000000 | u read as 2^23 + u for u < 2^23
constexpr uint32_t kMagicBits = 0x4B000000u;

struct MmArgs {
  const float* x;
  int64_t m;
  const uint8_t* qw;
  const Half* scales;
  const uint8_t* zeros;  // nullptr: symmetric
  const float* bias;     // nullptr: none
  int64_t out, in, gs, groups;
  float* y;
  const float* xp = nullptr;  // the split path: x permuted and pre-scaled [m x in] (else nullptr)
};

EMPAS_INLINE uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

/// Codes of elements [e0, e0 + n), any alignment (pack_cpu's decoder, copied
/// here so that it is compiled for the caller's ISA).
template <int B>
EMPAS_INLINE void unpack_codes(const uint8_t* __restrict qw, int64_t e0, int64_t n,
                               uint8_t* __restrict codes) {
  constexpr uint64_t kMask = (1u << B) - 1u;
  const auto code_at = [qw](int64_t e) {
    const int64_t bit = e * B;
    const int sh = static_cast<int>(bit & 7);
    uint32_t v = qw[bit >> 3];
    if (sh + B > 8) v |= static_cast<uint32_t>(qw[(bit >> 3) + 1]) << 8;
    return static_cast<uint8_t>((v >> sh) & ((1u << B) - 1u));
  };
  int64_t i = 0;
  for (; i < n && ((e0 + i) & 7) != 0; ++i) codes[i] = code_at(e0 + i);
  for (; i + 8 <= n; i += 8) {
    const uint8_t* p = qw + (e0 + i) / 8 * B;
    uint64_t v = 0;
    for (int k = 0; k < B; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    for (int j = 0; j < 8; ++j) codes[i + j] = static_cast<uint8_t>((v >> (j * B)) & kMask);
  }
  for (; i < n; ++i) codes[i] = code_at(e0 + i);
}

// ---- vector types -----------------------------------------------------------
// Each provides W lanes: F (fp32 vector), I (int32 codes), zero, set1, loadx,
// fma (a*b+c), codes_fast<B>(p: the first byte of 8*W/8 elements' stream),
// codes_u8(p: W unpacked codes), to_w(I u, F zmagic) = float(u - z), hsum.

/// Portable: 8 scalar lanes (mul then add, no contraction).
namespace base {
struct V : detail::BaseF8 {
  static constexpr int W = 8;
  struct I {
    uint32_t v[8];
  };
  static EMPAS_INLINE F sub(const F& a, const F& b) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] - b.v[l];
    return r;
  }
  static EMPAS_INLINE F fma(const F& a, const F& b, const F& c) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
  template <int B>
  static EMPAS_INLINE I codes_fast(const uint8_t* p) {
    I r;
    uint64_t v = 0;
    for (int k = 0; k < B; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    for (int l = 0; l < 8; ++l) r.v[l] = static_cast<uint32_t>((v >> (l * B)) & ((1u << B) - 1u));
    return r;
  }
  static EMPAS_INLINE I codes_u8(const uint8_t* p) {
    I r;
    for (int l = 0; l < 8; ++l) r.v[l] = p[l];
    return r;
  }
  static EMPAS_INLINE I load_words(const uint8_t* p) {
    I r;
    for (int l = 0; l < 8; ++l) r.v[l] = load32(p + 4 * l);
    return r;
  }
  template <int B>
  static EMPAS_INLINE F field(const I& d, int k) {
    F r;
    for (int l = 0; l < 8; ++l)
      r.v[l] = k == 32 / B - 1
                   ? static_cast<float>(d.v[l] >> (32 - B))
                   : static_cast<float>(static_cast<int32_t>(d.v[l] & (((1u << B) - 1u) << (B * k))));
    return r;
  }
  static EMPAS_INLINE F to_w(const I& u, const F& zm) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = bits_float(u.v[l] | kMagicBits) - zm.v[l];
    return r;
  }
};

#include "packed_matmul_rows.inc"
}  // namespace base

#ifdef EMPAS_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
struct V : detail::Avx2F8 {
  static constexpr int W = 8;
  using I = __m256i;
  static EMPAS_INLINE F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  template <int B>
  static EMPAS_INLINE I codes_fast(const uint8_t* p) {
    if constexpr (B == 8) {
      return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    } else if constexpr (B <= 4) {
      const __m256i sh = _mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
      const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(load32(p))), sh);
      return _mm256_and_si256(v, _mm256_set1_epi32((1 << B) - 1));
    } else {  // 5..7: lanes 0-3 from the word at byte 0, lanes 4-7 from the word at byte 4B/8
      constexpr int s1 = (4 * B) % 8;
      const __m256i sh = _mm256_setr_epi32(0, B, 2 * B, 3 * B, s1, s1 + B, s1 + 2 * B, s1 + 3 * B);
      const __m256i w =
          _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi32(static_cast<int>(load32(p)))),
                                  _mm_set1_epi32(static_cast<int>(load32(p + (4 * B) / 8))), 1);
      return _mm256_and_si256(_mm256_srlv_epi32(w, sh), _mm256_set1_epi32((1 << B) - 1));
    }
  }
  static EMPAS_INLINE I codes_u8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static EMPAS_INLINE I load_words(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  /// Field k of each word as fp32: u * 2^(B k), or u for the top field.
  template <int B>
  static EMPAS_INLINE F field(I d, int k) {
    if (k == 32 / B - 1) return _mm256_cvtepi32_ps(_mm256_srli_epi32(d, 32 - B));
    return _mm256_cvtepi32_ps(
        _mm256_and_si256(d, _mm256_set1_epi32(static_cast<int>(((1u << B) - 1u) << (B * k)))));
  }
  static EMPAS_INLINE F to_w(I u, F zm) {
    return _mm256_sub_ps(
        _mm256_castsi256_ps(_mm256_or_si256(u, _mm256_set1_epi32(static_cast<int>(kMagicBits)))), zm);
  }
};

#include "packed_matmul_rows.inc"
}  // namespace avx2
#pragma GCC pop_options

// GCC 12's AVX-512 intrinsics start from _mm256_undefined_si256(), which
// -Wmaybe-uninitialized reports falsely (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
namespace avx512 {
struct V {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  static EMPAS_INLINE float h2f(Half h) { return _cvtsh_ss(h.bits); }
  static EMPAS_INLINE F zero() { return _mm512_setzero_ps(); }
  static EMPAS_INLINE F set1(float s) { return _mm512_set1_ps(s); }
  static EMPAS_INLINE F loadx(const float* p) { return _mm512_loadu_ps(p); }
  static EMPAS_INLINE F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static EMPAS_INLINE F add(F a, F b) { return _mm512_add_ps(a, b); }
  static EMPAS_INLINE F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  template <int B>
  static EMPAS_INLINE I codes_fast(const uint8_t* p) {
    if constexpr (B == 8) {
      return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else {  // two blocks of 8 (B bytes each)
      return _mm512_inserti64x4(_mm512_castsi256_si512(avx2::V::codes_fast<B>(p)),
                                avx2::V::codes_fast<B>(p + B), 1);
    }
  }
  static EMPAS_INLINE I codes_u8(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static EMPAS_INLINE I load_words(const uint8_t* p) { return _mm512_loadu_si512(p); }
  template <int B>
  static EMPAS_INLINE F field(I d, int k) {
    if (k == 32 / B - 1) return _mm512_cvtepi32_ps(_mm512_srli_epi32(d, 32 - B));
    return _mm512_cvtepi32_ps(
        _mm512_and_si512(d, _mm512_set1_epi32(static_cast<int>(((1u << B) - 1u) << (B * k)))));
  }
  static EMPAS_INLINE F to_w(I u, F zm) {
    return _mm512_sub_ps(
        _mm512_castsi512_ps(_mm512_or_si512(u, _mm512_set1_epi32(static_cast<int>(kMagicBits)))), zm);
  }
  static EMPAS_INLINE float hsum(F a) {
    const __m256 s = _mm256_add_ps(_mm512_castps512_ps256(a),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    return avx2::V::hsum(s);
  }
};
#include "packed_matmul_rows.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

using RowsFn = void (*)(int, const MmArgs&, int64_t, int64_t, uint8_t*);

void rows_baseline(int bits, const MmArgs& a, int64_t o0, int64_t o1, uint8_t* codes) {
  base::rows_dispatch(bits, a, false, o0, o1, codes);
}
#ifdef EMPAS_X86_DISPATCH
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(int bits, const MmArgs& a, int64_t o0, int64_t o1,
                                                        uint8_t* codes) {
  avx2::rows_dispatch(bits, a, a.in % 8 == 0 && a.gs % 8 == 0, o0, o1, codes);
}
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))) void rows_avx512(
    int bits, const MmArgs& a, int64_t o0, int64_t o1, uint8_t* codes) {
  avx512::rows_dispatch(bits, a, a.in % 16 == 0 && a.gs % 16 == 0, o0, o1, codes);
}
#pragma GCC diagnostic pop
#endif

RowsFn pick_rows() {
#ifdef EMPAS_X86_DISPATCH
  const char* isa = cpu_isa();
  if (std::strcmp(isa, "avx512") == 0) return &rows_avx512;
  if (std::strcmp(isa, "avx2") == 0) return &rows_avx2;
#endif
  return &rows_baseline;
}

}  // namespace

Status packed_matmul_cpu(const float* x, int64_t m, const uint8_t* qweight, const Half* scales,
                         const uint8_t* zeros, const float* bias, int64_t out_features, int64_t in_features,
                         int bits, int64_t group_size, float* y, int num_threads) {
  if (bits < 2 || bits > 8) return Status::kBadBits;
  if (m < 0 || out_features < 0 || in_features < 0) return Status::kBadShape;
  if (m == 0 || out_features == 0) return Status::kOk;
  if (in_features == 0) {  // an empty sum: y = bias
    for (int64_t i = 0; i < m; ++i)
      for (int64_t o = 0; o < out_features; ++o) y[i * out_features + o] = bias != nullptr ? bias[o] : 0.0f;
    return Status::kOk;
  }
  MmArgs a{x,
           m,
           qweight,
           scales,
           zeros,
           bias,
           out_features,
           in_features,
           effective_group_size(group_size, in_features),
           num_groups(in_features, group_size),
           y};
  const RowsFn fn = pick_rows();
  // The split path (see packed_matmul_rows.inc): b in {2, 4, 8} on AVX2 / AVX-512
  // when in and the group size are multiples of its block; x is permuted and
  // pre-scaled once here (serially: the values do not depend on the threads).
  const int lanes =
      std::strcmp(cpu_isa(), "avx512") == 0 ? 16 : (std::strcmp(cpu_isa(), "avx2") == 0 ? 8 : 0);
  std::vector<float> xp;
  if (lanes > 0 && (bits == 2 || bits == 4 || bits == 8)) {
    const int P = 32 / bits;
    const int64_t blk = static_cast<int64_t>(P) * lanes;
    if (a.in % blk == 0 && a.gs % blk == 0) {
      xp.resize(static_cast<size_t>(m * in_features));
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * in_features;
        float* pi = xp.data() + i * in_features;
        for (int64_t c0 = 0; c0 < in_features; c0 += blk)
          for (int k = 0; k < P; ++k) {
            const float sc = k == P - 1 ? 1.0f : std::ldexp(1.0f, -bits * k);
            for (int l = 0; l < lanes; ++l) pi[c0 + k * lanes + l] = xi[c0 + l * P + k] * sc;
          }
      }
      a.xp = xp.data();
    }
  }
  // Work ~ weight elements x passes over the weight: stay serial when small.
  const int64_t work = out_features * in_features * ((m + kMR - 1) / kMR);
  int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  threads = static_cast<int>(std::min<int64_t>({threads, out_features, std::max<int64_t>(1, work / 65536)}));
  if (threads <= 1) {
    std::vector<uint8_t> codes(static_cast<size_t>(in_features) + 64);
    fn(bits, a, 0, out_features, codes.data());
    return Status::kOk;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    std::vector<uint8_t> codes(static_cast<size_t>(in_features) + 64);
    fn(bits, a, out_features * t / nt, out_features * (t + 1) / nt, codes.data());
  }
  return Status::kOk;
}

Status packed_matmul_cpu(const void* x, DType x_dtype, int64_t m, const uint8_t* qweight, const Half* scales,
                         const uint8_t* zeros, const float* bias, int64_t out_features, int64_t in_features,
                         int bits, int64_t group_size, void* y, DType y_dtype, int num_threads) {
  return with_f32_io(x, x_dtype, m, in_features, y, y_dtype, out_features, [&](const float* xf, float* yf) {
    return packed_matmul_cpu(xf, m, qweight, scales, zeros, bias, out_features, in_features, bits, group_size,
                             yf, num_threads);
  });
}

}  // namespace empas::kernels
