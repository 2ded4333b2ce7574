// CPU fused matmul with int8 activations (packed_matmul.hpp,
// packed_matmul_a8_cpu): the decode kernel that trades the exact fp32 product
// of packed_matmul_cpu for integer dot products, as llama.cpp's q4_0 x q8_0.
//
// x is quantized per block of 64 elements of a row: dx = amax / 127, q =
// rint(x * (127 / amax)) in [-127, 127] (round half to even), once per call.
// The weight codes u stay as packed. Per output element, per chunk of C
// elements (C = 64, or 128 for 2-bit), eight int32 lane sums of u * q are
// formed exactly (AVX2: vpmaddubsw + vpmaddwd over the packed bytes; 8-bit
// codes as u - 128 with the sign trick, so no int16 sum saturates), converted
// to fp32 (exact: |sum| < 2^24) and accumulated per group as G += float(sum) *
// dx (one FMA per lane and chunk; dx of each lane's block, read as a vector
// prepared once per call), then Y += G * s (one FMA per lane and group); the
// zero point is the scalar correction s * z' * sum over the group's blocks of
// dx * sum(q) (z' = z, or z - 128 for 8-bit). y = hsum(Y) - correction + bias.
// The weight rows are prefetched kPrefetch bytes ahead of the reads: one weight
// stream per thread, from DRAM, too short per call for the hardware prefetcher
// to ramp up on small layers.
//
// Lane l of a chunk covers elements 8l..8l+7 (4-bit), 16l..16l+15 (2-bit), or
// 4l..4l+3 and 32+4l..32+4l+3 (8-bit); the integer sums do not depend on their
// order, and the baseline (scalar) path uses the same lanes, FMAs (std::fma)
// and horizontal-sum order, so AVX2 and baseline agree bit for bit, for any
// thread count. On AVX-512 CPUs the AVX2 code runs.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "empas/kernels/pack.hpp"
#include "empas/kernels/packed_matmul.hpp"
#include "f32_io.hpp"
#include "group_quant.hpp"
#include "lanes8.hpp"

namespace empas::kernels {
namespace {

using namespace detail;

constexpr int kMR = 4;               // rows of x per pass over a weight row
constexpr int64_t kPrefetch = 2048;  // bytes of weights prefetched ahead of the reads
constexpr int64_t kBlock = 64;       // elements of x per int8 scale (row_a8 indexes blocks by c >> 6)

constexpr int64_t chunk_of(int bits) { return bits == 2 ? 128 : 64; }

struct A8Args {
  const int8_t* xq;  // [m x in]: q in the layout of the chosen path (lay_out)
  const float* dv;   // [m x in / C x 8]: per chunk, each lane's block scale dx
  const float* xz;   // [m x groups]: sum over the group's blocks of dx_b * sum(q over b)
  int64_t m;
  const uint8_t* qw;
  const Half* scales;
  const uint8_t* zeros;  // nullptr: symmetric
  const float* bias;     // nullptr: none
  int64_t out, in, gs, groups;
  float* y;
};

// ---- vector types: F (8 fp32 lanes), I (8 int32 lanes), and chunk<B, MR>,
// the int32 lane sums of one chunk for MR rows of x --------------------------

namespace base {
struct V : BaseF8 {
  struct I {
    int32_t v[8];
  };
  static EMPAS_INLINE F fma_i(const I& a, const F& b, const F& c) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = std::fma(static_cast<float>(a.v[l]), b.v[l], c.v[l]);
    return r;
  }
  static EMPAS_INLINE F fma(const F& a, const F& b, const F& c) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = std::fma(a.v[l], b.v[l], c.v[l]);
    return r;
  }
  /// q in element order (lay_out(.., false)); p: the chunk's first byte.
  template <int B, int MR>
  static EMPAS_INLINE void chunk(const uint8_t* p, const int8_t* const* xr, int64_t c, I* out) {
    constexpr int C = static_cast<int>(chunk_of(B));
    int32_t u[C];
    for (int e = 0; e < C; ++e) {
      const int bit = e * B;
      u[e] = static_cast<int32_t>((p[bit >> 3] >> (bit & 7)) & ((1u << B) - 1u)) - (B == 8 ? 128 : 0);
    }
    for (int i = 0; i < MR; ++i) {
      const int8_t* q = xr[i] + c;
      for (int l = 0; l < 8; ++l) {
        int32_t s = 0;
        if constexpr (B == 8) {
          for (int k = 0; k < 4; ++k)
            s += u[4 * l + k] * q[4 * l + k] + u[32 + 4 * l + k] * q[32 + 4 * l + k];
        } else {
          constexpr int L = C / 8;
          for (int k = 0; k < L; ++k) s += u[L * l + k] * q[L * l + k];
        }
        out[i].v[l] = s;
      }
    }
  }
};
#include "packed_matmul_a8_rows.inc"
}  // namespace base

#ifdef EMPAS_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
struct V : Avx2F8 {
  using I = __m256i;
  static EMPAS_INLINE F fma_i(I a, F b, F c) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), b, c); }
  static EMPAS_INLINE __m256i load(const void* p) {
    return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  }
  /// q in the permuted layout (lay_out(.., true)).
  template <int B, int MR>
  static EMPAS_INLINE void chunk(const uint8_t* p, const int8_t* const* xr, int64_t c, I* out) {
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (B == 4) {  // byte j: elements 2j (low nibble), 2j+1; q: [evens | odds]
      const __m256i m4 = _mm256_set1_epi8(0x0F), d = load(p);
      const __m256i lo = _mm256_and_si256(d, m4), hi = _mm256_and_si256(_mm256_srli_epi16(d, 4), m4);
      for (int i = 0; i < MR; ++i) {
        const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, load(xr[i] + c)),
                                           _mm256_maddubs_epi16(hi, load(xr[i] + c + 32)));
        out[i] = _mm256_madd_epi16(s, ones);
      }
    } else if constexpr (B == 2) {  // byte j: elements 4j+k in bits 2k; q: field k at 32k
      const __m256i m3 = _mm256_set1_epi8(0x03), d = load(p);
      const __m256i f0 = _mm256_and_si256(d, m3), f1 = _mm256_and_si256(_mm256_srli_epi16(d, 2), m3);
      const __m256i f2 = _mm256_and_si256(_mm256_srli_epi16(d, 4), m3),
                    f3 = _mm256_and_si256(_mm256_srli_epi16(d, 6), m3);
      for (int i = 0; i < MR; ++i) {
        const int8_t* q = xr[i] + c;
        const __m256i s01 =
            _mm256_add_epi16(_mm256_maddubs_epi16(f0, load(q)), _mm256_maddubs_epi16(f1, load(q + 32)));
        const __m256i s23 =
            _mm256_add_epi16(_mm256_maddubs_epi16(f2, load(q + 64)), _mm256_maddubs_epi16(f3, load(q + 96)));
        out[i] = _mm256_madd_epi16(_mm256_add_epi16(s01, s23), ones);
      }
    } else {  // 8-bit: w = u - 128 as int8; |w| * (q * sign(w)), pairs <= 2 * 128 * 127
      const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
      const __m256i w0 = _mm256_xor_si256(load(p), bias), w1 = _mm256_xor_si256(load(p + 32), bias);
      const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
      for (int i = 0; i < MR; ++i) {
        const int8_t* q = xr[i] + c;
        const __m256i s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(load(q), w0)), ones);
        const __m256i s1 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(load(q + 32), w1)), ones);
        out[i] = _mm256_add_epi32(s0, s1);
      }
    }
  }
};
#include "packed_matmul_a8_rows.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

using RowsFn = void (*)(int, const A8Args&, int64_t, int64_t);

bool use_simd() {
#ifdef EMPAS_X86_DISPATCH
  return std::strcmp(cpu_isa(), "baseline") != 0;  // avx2 or avx512 (which runs the AVX2 code)
#else
  return false;
#endif
}

RowsFn pick_rows(bool simd) {
#ifdef EMPAS_X86_DISPATCH
  if (simd) return &avx2::rows_dispatch;
#endif
  (void)simd;
  return &base::rows_dispatch;
}

/// Writes row i's codes q (element order) into dst in the layout of the path:
/// simd: per chunk, 4-bit [q_0 q_2 .. q_62 | q_1 q_3 .. q_63], 2-bit field k
/// (elements 4j + k) at 32k + j, 8-bit unchanged; baseline: element order.
void lay_out(int bits, bool simd, const int8_t* q, int64_t in, int8_t* dst) {
  if (!simd || bits == 8) {
    std::memcpy(dst, q, static_cast<size_t>(in));
    return;
  }
  const int64_t C = chunk_of(bits), P = 8 / bits, J = C / P;  // J bytes per chunk
  for (int64_t c0 = 0; c0 < in; c0 += C)
    for (int64_t j = 0; j < J; ++j)
      for (int64_t k = 0; k < P; ++k) dst[c0 + k * J + j] = q[c0 + P * j + k];
}

}  // namespace

bool packed_matmul_a8_applies(int bits, int64_t in_features, int64_t group_size) {
  if ((bits != 2 && bits != 4 && bits != 8) || in_features <= 0) return false;
  const int64_t c = chunk_of(bits), gs = effective_group_size(group_size, in_features);
  return in_features % c == 0 && gs % c == 0;
}

Status packed_matmul_a8_cpu(const float* x, int64_t m, const uint8_t* qweight, const Half* scales,
                            const uint8_t* zeros, const float* bias, int64_t out_features,
                            int64_t in_features, int bits, int64_t group_size, float* y, int num_threads) {
  const auto exact = [&] {
    return packed_matmul_cpu(x, m, qweight, scales, zeros, bias, out_features, in_features, bits, group_size,
                             y, num_threads);
  };
  if (bits < 2 || bits > 8) return Status::kBadBits;
  if (m < 0 || out_features < 0 || in_features < 0) return Status::kBadShape;
  if (m == 0 || out_features == 0 || !packed_matmul_a8_applies(bits, in_features, group_size)) return exact();
  const int64_t gs = effective_group_size(group_size, in_features),
                groups = num_groups(in_features, group_size);
  const int64_t nb = in_features / kBlock, bpg = gs / kBlock;
  const bool simd = use_simd();
  const int64_t C = chunk_of(bits), nc = in_features / C, bpc = C / kBlock;  // blocks per chunk: 1 or 2
  std::vector<int8_t> q(static_cast<size_t>(in_features)), xq(static_cast<size_t>(m * in_features));
  std::vector<float> dv(static_cast<size_t>(m * nc * 8)), xz(static_cast<size_t>(m * groups)), bs(nb);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * in_features;
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = xi + b * kBlock;
      float amax = 0.0f;
      for (int64_t e = 0; e < kBlock; ++e) {
        const float v = std::fabs(xb[e]);
        if (!(v <= std::numeric_limits<float>::max()))
          return exact();  // NaN/Inf: the exact path propagates them
        amax = std::max(amax, v);
      }
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t qs = 0;
      for (int64_t e = 0; e < kBlock; ++e) {
        const float t = std::clamp(rint_small(xb[e] * inv), -127.0f, 127.0f);
        q[b * kBlock + e] = static_cast<int8_t>(t);
        qs += static_cast<int32_t>(t);
      }
      // lanes of chunk b / bpc covering block b: all 8 (C = 64), or 4 (2-bit: lanes 0-3
      // hold elements 0..63 of the chunk, lanes 4-7 elements 64..127)
      float* dl = dv.data() + (i * nc + b / bpc) * 8;
      for (int64_t l = (b % bpc) * (8 / bpc); l < (b % bpc + 1) * (8 / bpc); ++l) dl[l] = d;
      bs[b] = d * static_cast<float>(qs);
    }
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0.0f;
      for (int64_t b = g * bpg; b < std::min((g + 1) * bpg, nb); ++b) s += bs[b];
      xz[i * groups + g] = s;
    }
    lay_out(bits, simd, q.data(), in_features, xq.data() + i * in_features);
  }
  const A8Args a{xq.data(), dv.data(),    xz.data(),   m,  qweight, scales, zeros,
                 bias,      out_features, in_features, gs, groups,  y};
  const RowsFn fn = pick_rows(simd);
  // Work ~ weight elements x passes over the weight: stay serial when small.
  const int64_t work = out_features * in_features * ((m + kMR - 1) / kMR);
  int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  threads = static_cast<int>(std::min<int64_t>({threads, out_features, std::max<int64_t>(1, work / 131072)}));
  if (threads <= 1) {
    fn(bits, a, 0, out_features);
    return Status::kOk;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    fn(bits, a, out_features * t / nt, out_features * (t + 1) / nt);
  }
  return Status::kOk;
}

Status packed_matmul_a8_cpu(const void* x, DType x_dtype, int64_t m, const uint8_t* qweight,
                            const Half* scales, const uint8_t* zeros, const float* bias, int64_t out_features,
                            int64_t in_features, int bits, int64_t group_size, void* y, DType y_dtype,
                            int num_threads) {
  return with_f32_io(x, x_dtype, m, in_features, y, y_dtype, out_features, [&](const float* xf, float* yf) {
    return packed_matmul_a8_cpu(xf, m, qweight, scales, zeros, bias, out_features, in_features, bits,
                                group_size, yf, num_threads);
  });
}

}  // namespace empas::kernels
