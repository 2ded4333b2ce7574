// CPU fake-quant kernels: OpenMP over groups, SIMD inside a group. The group
// loops are compiled three times (AVX-512, AVX2 and the baseline ISA) and one
// variant is picked at run time, so a portable build still vectorizes.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "empas/kernels/fake_quant.hpp"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define EMPAS_X86_DISPATCH 1
#include <immintrin.h>
#endif

#define EMPAS_INLINE inline __attribute__((always_inline))

namespace empas::kernels {

const char* status_message(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kBadBits:
      return "bits must be in 2..8";
    case Status::kBadShape:
      return "rows and cols must be >= 0";
    case Status::kNonFinite:
      return "weight contains NaN or Inf";
    case Status::kScaleOverflow:
      return "a group's quantization scale overflows fp16 (|scale| > 65504): weight values too large";
    case Status::kCudaError:
      return "CUDA error";
    case Status::kBadDType:
      return "dtype must be float32, float16 or bfloat16";
  }
  return "unknown status";
}

namespace {

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

/// The dequantized value of w: rint(clamp(w / scale, qlo, qhi)) * scale, +0.0
/// for zero. Clamping before rounding equals rounding before clamping because
/// the bounds are integers.
EMPAS_INLINE float deq(float w, float scale, float qlo, float qhi) {
  float t = w / scale;
  t = t < qlo ? qlo : t;
  t = t > qhi ? qhi : t;
  return rint_small(t) * scale + 0.0f;
}

struct Cfg {
  int bits;
  bool symmetric;
  bool clip;
  int64_t cols;
  int64_t gs;      // elements per group (last group of a row may be shorter)
  int64_t groups;  // groups per row
};

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

/// Chooses the group's quantizer (with the clip search when asked).
EMPAS_INLINE Status choose(const Cfg& c, const float* __restrict x, int64_t n, GroupQ* out) {
  float m = 0.0f, lo = 0.0f, hi = 0.0f;
  if (!reduce(x, n, c.symmetric, &m, &lo, &hi)) return Status::kNonFinite;
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

template <class T>
EMPAS_INLINE void write_group(const float* __restrict x, const T* __restrict in, T* __restrict out, int64_t n,
                              const GroupQ& q) {
  if (q.mode == Mode::kCopy) {
    for (int64_t i = 0; i < n; ++i) out[i] = in[i];  // the caller skips this when in place
  } else if (q.mode == Mode::kZeros) {
    for (int64_t i = 0; i < n; ++i) out[i] = from_f<T>(0.0f);
  } else {
    const float s = q.scale, a = q.qlo, b = q.qhi;
    for (int64_t i = 0; i < n; ++i) out[i] = from_f<T>(deq(x[i], s, a, b));
  }
}

/// In place (x aliases the output, fp32 only).
EMPAS_INLINE void write_group_inplace(float* io, int64_t n, const GroupQ& q) {
  if (q.mode == Mode::kCopy) return;
  if (q.mode == Mode::kZeros) {
    for (int64_t i = 0; i < n; ++i) io[i] = 0.0f;
  } else {
    const float s = q.scale, a = q.qlo, b = q.qhi;
    for (int64_t i = 0; i < n; ++i) io[i] = deq(io[i], s, a, b);
  }
}

// ---- fp16 <-> fp32 for a group: hardware conversions (F16C, AVX-512) where
// the ISA has them, the portable ones of half.hpp otherwise. Both round to
// nearest even and keep subnormals (MXCSR's FTZ does not apply to vcvtps2ph).
enum IsaLevel : int { kIsaBaseline = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

void half_to_float_soft(const Half* __restrict s, float* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = fp16_to_float(s[i].bits);
}
void float_to_half_soft(const float* __restrict s, Half* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i].bits = float_to_fp16(s[i]);
}

#ifdef EMPAS_X86_DISPATCH
// GCC 12's AVX-512 conversion intrinsics start from _mm256_undefined_si256(),
// which -Wmaybe-uninitialized reports falsely (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx2,f16c"))) void half_to_float_f16c(const Half* __restrict s, float* __restrict d,
                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = fp16_to_float(s[i].bits);
}
__attribute__((target("avx2,f16c"))) void float_to_half_f16c(const float* __restrict s, Half* __restrict d,
                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) d[i].bits = float_to_fp16(s[i]);
}
__attribute__((target("avx512f"))) void half_to_float_avx512(const Half* __restrict s, float* __restrict d,
                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
  for (; i < n; ++i) d[i] = fp16_to_float(s[i].bits);
}
__attribute__((target("avx512f"))) void float_to_half_avx512(const float* __restrict s, Half* __restrict d,
                                                             int64_t n) {
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

/// One group of n elements: src -> dst (src == dst in place). buf holds n
/// floats (fp16/bf16 inputs).
template <class T, int kIsa>
EMPAS_INLINE Status process_group(const T* src, T* dst, int64_t n, const Cfg& c, float* buf) {
  const float* x;
  if constexpr (std::is_same_v<T, float>) {
    x = src;
  } else if constexpr (std::is_same_v<T, Half>) {
    half_to_float_n<kIsa>(src, buf, n);
    x = buf;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = to_f(src[i]);
    x = buf;
  }
  GroupQ q;
  const Status s = choose(c, x, n, &q);
  if (s != Status::kOk) return s;
  if (q.mode == Mode::kCopy && src == dst) return s;
  if constexpr (std::is_same_v<T, float>) {
    if (src == dst) {
      write_group_inplace(dst, n, q);
      return s;
    }
  }
  if constexpr (std::is_same_v<T, Half>) {
    if (q.mode == Mode::kQuant) {  // dequantize into buf, then convert it at once
      write_group_inplace(buf, n, q);
      float_to_half_n<kIsa>(buf, dst, n);
      return s;
    }
  }
  write_group<T>(x, src, dst, n, q);
  return s;
}

/// Processes groups [g0, g1) of the flattened rows x groups index space.
/// Groups of exactly kN elements (kN > 0) take a copy of the code compiled for
/// that constant size (no loop prologues/remainders: the usual group sizes are
/// small, so that per-group overhead counts). buf holds gs floats.
template <class T, int kIsa, int kN>
EMPAS_INLINE Status run_groups(const T* in, T* out, const Cfg& c, int64_t g0, int64_t g1, float* buf) {
  Status st = Status::kOk;
  int64_t row = g0 / c.groups, j = g0 % c.groups;
  for (int64_t g = g0; g < g1; ++g, ++j) {
    if (j == c.groups) {
      j = 0;
      ++row;
    }
    const int64_t off = row * c.cols + j * c.gs;
    const int64_t n = std::min(c.gs, c.cols - j * c.gs);
    Status s;
    if (kN > 0 && n == kN)
      s = process_group<T, kIsa>(in + off, out + off, kN, c, buf);
    else
      s = process_group<T, kIsa>(in + off, out + off, n, c, buf);
    if (s != Status::kOk) st = s;
  }
  return st;
}

/// run_groups for the ISA, with a constant-size copy for groups of 32, 64, 128.
template <class T, int kIsa>
EMPAS_INLINE Status run_groups_sized(const T* in, T* out, const Cfg& c, int64_t g0, int64_t g1, float* buf) {
  switch (c.gs) {
    case 128:
      return run_groups<T, kIsa, 128>(in, out, c, g0, g1, buf);
    case 64:
      return run_groups<T, kIsa, 64>(in, out, c, g0, g1, buf);
    case 32:
      return run_groups<T, kIsa, 32>(in, out, c, g0, g1, buf);
    default:
      return run_groups<T, kIsa, 0>(in, out, c, g0, g1, buf);
  }
}

template <class T>
using GroupsFn = Status (*)(const T*, T*, const Cfg&, int64_t, int64_t, float*);

template <class T>
Status run_groups_baseline(const T* in, T* out, const Cfg& c, int64_t g0, int64_t g1, float* buf) {
  return run_groups_sized<T, kIsaBaseline>(in, out, c, g0, g1, buf);
}

#ifdef EMPAS_X86_DISPATCH
template <class T>
__attribute__((target("avx2,f16c"))) Status run_groups_avx2(const T* in, T* out, const Cfg& c, int64_t g0,
                                                            int64_t g1, float* buf) {
  return run_groups_sized<T, kIsaAvx2>(in, out, c, g0, g1, buf);
}
template <class T>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,f16c"))) Status
run_groups_avx512(const T* in, T* out, const Cfg& c, int64_t g0, int64_t g1, float* buf) {
  return run_groups_sized<T, kIsaAvx512>(in, out, c, g0, g1, buf);
}

enum class Isa { kBaseline, kAvx2, kAvx512 };
Isa hardware_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) return Isa::kAvx2;
    return Isa::kBaseline;
  }();
  return isa;
}
std::atomic<int> g_isa_limit{static_cast<int>(Isa::kAvx512)};  // set_cpu_isa()
Isa detect_isa() { return static_cast<Isa>(std::min(static_cast<int>(hardware_isa()), g_isa_limit.load())); }
#endif

template <class T>
GroupsFn<T> pick() {
#ifdef EMPAS_X86_DISPATCH
  switch (detect_isa()) {
    case Isa::kAvx512:
      return &run_groups_avx512<T>;
    case Isa::kAvx2:
      return &run_groups_avx2<T>;
    case Isa::kBaseline:
      break;
  }
#endif
  return &run_groups_baseline<T>;
}

template <class T>
Status run(const T* in, T* out, int64_t rows, int64_t cols, const FakeQuantParams& p) {
  if (p.bits < 2 || p.bits > 8) return Status::kBadBits;
  if (rows < 0 || cols < 0) return Status::kBadShape;
  if (rows == 0 || cols == 0) return Status::kOk;
  Cfg c;
  c.bits = p.bits;
  c.symmetric = p.symmetric;
  c.clip = p.clip_search;
  c.cols = cols;
  c.gs = effective_group_size(p.group_size, cols);
  c.groups = (cols + c.gs - 1) / c.gs;
  const int64_t total = rows * c.groups;
  const GroupsFn<T> fn = pick<T>();

  // Work per call ~ elements (x 11 with the clip search): stay serial when
  // small, so that tiny matrices do not pay for waking the thread pool.
  const int64_t work = rows * cols * (c.clip ? kClipRatios : 1);
  int threads = p.num_threads > 0 ? p.num_threads : omp_get_max_threads();
  threads = static_cast<int>(std::min<int64_t>({threads, total, std::max<int64_t>(1, work / 32768)}));
  if (threads <= 1) {
    std::vector<float> buf(std::is_same_v<T, float> ? 0 : c.gs);
    return fn(in, out, c, 0, total, buf.data());
  }
  int status = 0;
#pragma omp parallel num_threads(threads)
  {
    // Static split of the groups into one contiguous range per thread.
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t g0 = total * t / nt, g1 = total * (t + 1) / nt;
    std::vector<float> buf(std::is_same_v<T, float> ? 0 : c.gs);
    const Status s = fn(in, out, c, g0, g1, buf.data());
    if (s != Status::kOk) {
#pragma omp atomic write
      status = static_cast<int>(s);
    }
  }
  return static_cast<Status>(status);
}

}  // namespace

Status fake_quant_cpu(const float* in, float* out, int64_t rows, int64_t cols, const FakeQuantParams& p) {
  return run<float>(in, out, rows, cols, p);
}
Status fake_quant_cpu(const Half* in, Half* out, int64_t rows, int64_t cols, const FakeQuantParams& p) {
  return run<Half>(in, out, rows, cols, p);
}
Status fake_quant_cpu(const BFloat16* in, BFloat16* out, int64_t rows, int64_t cols,
                      const FakeQuantParams& p) {
  return run<BFloat16>(in, out, rows, cols, p);
}

Status fake_quant_cpu(const void* in, void* out, DType dtype, int64_t rows, int64_t cols,
                      const FakeQuantParams& p) {
  switch (dtype) {
    case DType::kFloat32:
      return run<float>(static_cast<const float*>(in), static_cast<float*>(out), rows, cols, p);
    case DType::kFloat16:
      return run<Half>(static_cast<const Half*>(in), static_cast<Half*>(out), rows, cols, p);
    case DType::kBFloat16:
      return run<BFloat16>(static_cast<const BFloat16*>(in), static_cast<BFloat16*>(out), rows, cols, p);
  }
  return Status::kBadDType;
}

bool set_cpu_isa(const char* name) {
  const std::string n = name ? name : "";
#ifdef EMPAS_X86_DISPATCH
  Isa want;
  if (n == "auto" || n == "avx512") {
    want = Isa::kAvx512;
  } else if (n == "avx2") {
    want = Isa::kAvx2;
  } else if (n == "baseline") {
    want = Isa::kBaseline;
  } else {
    return false;
  }
  if (n != "auto" && static_cast<int>(want) > static_cast<int>(hardware_isa())) return false;
  g_isa_limit.store(static_cast<int>(want));
  return true;
#else
  return n == "auto" || n == "baseline";
#endif
}

const char* cpu_isa() {
#ifdef EMPAS_X86_DISPATCH
  switch (detect_isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kBaseline:
      break;
  }
#endif
  return "baseline";
}

}  // namespace empas::kernels
