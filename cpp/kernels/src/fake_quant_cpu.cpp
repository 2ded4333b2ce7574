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
#include "group_quant.hpp"

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

using namespace detail;

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
  const Cfg c = make_cfg(p, cols);
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
