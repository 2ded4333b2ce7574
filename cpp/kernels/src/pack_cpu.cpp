// CPU packing kernels: quantize + bit-pack (OpenMP over byte-aligned blocks of
// rows, the quantizer shared with the fake-quant kernels) and dequantize
// (OpenMP over rows; the row loops compiled for AVX-512, AVX2 and the baseline
// ISA, picked at run time like the fake-quant kernels).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "empas/kernels/pack.hpp"
#include "empas/kernels/packed_matmul.hpp"
#include "group_quant.hpp"

namespace empas::kernels {
namespace {

using namespace detail;

// ---- quantize + pack -------------------------------------------------------

/// Appends codes to a little-endian bit stream that starts on a byte boundary.
class BitWriter {
 public:
  explicit BitWriter(uint8_t* p) : p_(p) {}
  void put(uint32_t u, int bits) {
    acc_ |= static_cast<uint64_t>(u) << n_;
    n_ += bits;
    while (n_ >= 8) {
      *p_++ = static_cast<uint8_t>(acc_);
      acc_ >>= 8;
      n_ -= 8;
    }
  }
  /// Writes the last partial byte (its unused high bits 0).
  void flush() {
    if (n_ > 0) *p_ = static_cast<uint8_t>(acc_ & ((1u << n_) - 1u));
    n_ = 0;
    acc_ = 0;
  }

 private:
  uint8_t* p_;
  uint64_t acc_ = 0;
  int n_ = 0;
};

/// Quantizes and packs rows [r0, r1); the stream of row r0 starts on a byte
/// boundary. buf holds gs floats.
template <class T>
Status pack_rows(const T* in, const Cfg& c, int64_t r0, int64_t r1, uint8_t* qweight, Half* scales,
                 uint8_t* zeros, float* buf) {
  Status st = Status::kOk;
  BitWriter bw(qweight + r0 * c.cols * c.bits / 8);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t j = 0; j < c.groups; ++j) {
      const int64_t off = r * c.cols + j * c.gs;
      const int64_t n = std::min(c.gs, c.cols - j * c.gs);
      const float* x;
      if constexpr (std::is_same_v<T, float>) {
        x = in + off;
      } else {
        for (int64_t i = 0; i < n; ++i) buf[i] = to_f(in[off + i]);
        x = buf;
      }
      GroupQ q{Mode::kQuant, 0.0f, 0.0f, 0.0f};
      float lo = 0.0f;
      Status s = choose(c, x, n, &q, &lo);
      float scale = 0.0f;  // as stored (fp16-exact)
      uint32_t zero = 0;
      uint32_t fill = 0;  // the code of every element, when not quantized one by one
      if (s == Status::kOk && q.mode == Mode::kCopy) {  // asymmetric, s == 0: the group reads fp16(min)
        const float m = round_to_fp16(lo);
        if (!std::isfinite(m)) {
          s = Status::kScaleOverflow;
        } else if (m != 0.0f) {
          scale = m;
          fill = 1;
        }
      } else if (s == Status::kOk && q.mode == Mode::kZeros) {  // symmetric, d == 0: q = 0
        fill = 1u << (c.bits - 1);
      }
      if (s == Status::kOk && q.mode == Mode::kQuant) {
        scale = q.scale;
        zero = static_cast<uint32_t>(-q.qlo);
        const float a = q.qlo, b = q.qhi;
        for (int64_t i = 0; i < n; ++i)
          bw.put(static_cast<uint32_t>(quant_index(x[i], scale, a, b) - a), c.bits);
      } else {
        if (s != Status::kOk) {  // keep the stream in step; the outputs are unspecified anyway
          st = s;
          scale = 0.0f;
          fill = 0;
        }
        for (int64_t i = 0; i < n; ++i) bw.put(fill, c.bits);
      }
      scales[r * c.groups + j].bits = float_to_fp16(scale);
      if (zeros != nullptr) zeros[r * c.groups + j] = static_cast<uint8_t>(zero);
    }
  }
  bw.flush();
  return st;
}

template <class T>
Status pack_run(const T* in, int64_t rows, int64_t cols, const FakeQuantParams& p, uint8_t* qweight,
                Half* scales, uint8_t* zeros) {
  const Cfg c = make_cfg(p, cols);
  // Rows come in blocks of k, the fewest rows whose bits fill whole bytes, so
  // that each thread's share of the stream starts on a byte boundary and no two
  // threads write the same byte.
  int64_t k = 1;
  while ((k * cols * p.bits) % 8 != 0) ++k;
  const int64_t blocks = (rows + k - 1) / k;
  const int64_t work = rows * cols * (c.clip ? kClipRatios : 1);
  int threads = p.num_threads > 0 ? p.num_threads : omp_get_max_threads();
  threads = static_cast<int>(std::min<int64_t>({threads, blocks, std::max<int64_t>(1, work / 32768)}));
  const size_t buf_n = std::is_same_v<T, float> ? 0 : static_cast<size_t>(c.gs);
  if (threads <= 1) {
    std::vector<float> buf(buf_n);
    return pack_rows(in, c, 0, rows, qweight, scales, zeros, buf.data());
  }
  int status = 0;
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t r0 = std::min(rows, blocks * t / nt * k), r1 = std::min(rows, blocks * (t + 1) / nt * k);
    std::vector<float> buf(buf_n);
    if (r0 < r1) {
      const Status s = pack_rows(in, c, r0, r1, qweight, scales, zeros, buf.data());
      if (s != Status::kOk) {
#pragma omp atomic write
        status = static_cast<int>(s);
      }
    }
  }
  return static_cast<Status>(status);
}

// ---- dequant ---------------------------------------------------------------

/// The code of element e, read from the one or two bytes that hold it (never
/// past the end of the stream: bit e * B + B - 1 is in it).
template <int B>
EMPAS_INLINE uint32_t code_at(const uint8_t* __restrict qw, int64_t e) {
  const int64_t bit = e * B;
  const int sh = static_cast<int>(bit & 7);
  uint32_t v = qw[bit >> 3];
  if (sh + B > 8) v |= static_cast<uint32_t>(qw[(bit >> 3) + 1]) << 8;
  return (v >> sh) & ((1u << B) - 1u);
}

/// Codes of elements [e0, e0 + n) into codes. 8 consecutive elements starting
/// at a multiple of 8 fill exactly B whole bytes: those are read as one
/// little-endian word; the elements before the first and after the last such
/// block are read one by one.
template <int B>
EMPAS_INLINE void decode(const uint8_t* __restrict qw, int64_t e0, int64_t n, uint8_t* __restrict codes) {
  constexpr uint64_t kMask = (1u << B) - 1u;
  int64_t i = 0;
  for (; i < n && ((e0 + i) & 7) != 0; ++i) codes[i] = static_cast<uint8_t>(code_at<B>(qw, e0 + i));
  for (; i + 8 <= n; i += 8) {
    const uint8_t* p = qw + (e0 + i) / 8 * B;
    uint64_t v = 0;
    for (int k = 0; k < B; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    for (int j = 0; j < 8; ++j) codes[i + j] = static_cast<uint8_t>((v >> (j * B)) & kMask);
  }
  for (; i < n; ++i) codes[i] = static_cast<uint8_t>(code_at<B>(qw, e0 + i));
}

struct DeqArgs {
  const uint8_t* qweight;
  const Half* scales;
  const uint8_t* zeros;  // nullptr: symmetric
  int64_t cols, gs, groups;
  void* out;  // row r goes to out + (r - row0) * cols
  int64_t row0 = 0;
};

/// Rows [r0, r1). codes holds cols bytes, vals cols floats (fp16/bf16 output:
/// the row is computed in fp32, then converted at once).
template <class T, int B, int kIsa>
EMPAS_INLINE void deq_rows(const DeqArgs& a, int64_t r0, int64_t r1, uint8_t* __restrict codes,
                           float* __restrict vals) {
  T* __restrict out = static_cast<T*>(a.out);
  const float half = static_cast<float>(1 << (B - 1));
  for (int64_t r = r0; r < r1; ++r) {
    decode<B>(a.qweight, r * a.cols, a.cols, codes);
    T* __restrict y = out + (r - a.row0) * a.cols;
    float* __restrict v;
    if constexpr (std::is_same_v<T, float>)
      v = y;
    else
      v = vals;
    for (int64_t j = 0; j < a.groups; ++j) {
      const int64_t c0 = j * a.gs, n = std::min(a.gs, a.cols - c0);
      const float s = fp16_to_float(a.scales[r * a.groups + j].bits);
      const float z = a.zeros != nullptr ? static_cast<float>(a.zeros[r * a.groups + j]) : half;
      const uint8_t* __restrict u = codes + c0;
      float* __restrict vg = v + c0;
      for (int64_t i = 0; i < n; ++i) vg[i] = (static_cast<float>(u[i]) - z) * s + 0.0f;
    }
    if constexpr (std::is_same_v<T, Half>) {
      float_to_half_n<kIsa>(v, y, a.cols);
    } else if constexpr (std::is_same_v<T, BFloat16>) {
      for (int64_t i = 0; i < a.cols; ++i) y[i].bits = float_to_bf16(v[i]);
    }
  }
}

template <class T, int kIsa>
EMPAS_INLINE void deq_rows_bits(int bits, const DeqArgs& a, int64_t r0, int64_t r1, uint8_t* codes,
                                float* vals) {
  switch (bits) {
    case 2:
      return deq_rows<T, 2, kIsa>(a, r0, r1, codes, vals);
    case 3:
      return deq_rows<T, 3, kIsa>(a, r0, r1, codes, vals);
    case 4:
      return deq_rows<T, 4, kIsa>(a, r0, r1, codes, vals);
    case 5:
      return deq_rows<T, 5, kIsa>(a, r0, r1, codes, vals);
    case 6:
      return deq_rows<T, 6, kIsa>(a, r0, r1, codes, vals);
    case 7:
      return deq_rows<T, 7, kIsa>(a, r0, r1, codes, vals);
    default:
      return deq_rows<T, 8, kIsa>(a, r0, r1, codes, vals);
  }
}

template <class T>
using DeqFn = void (*)(int, const DeqArgs&, int64_t, int64_t, uint8_t*, float*);

template <class T>
void deq_baseline(int bits, const DeqArgs& a, int64_t r0, int64_t r1, uint8_t* codes, float* vals) {
  deq_rows_bits<T, kIsaBaseline>(bits, a, r0, r1, codes, vals);
}
#ifdef EMPAS_X86_DISPATCH
template <class T>
__attribute__((target("avx2,f16c"))) void deq_avx2(int bits, const DeqArgs& a, int64_t r0, int64_t r1,
                                                   uint8_t* codes, float* vals) {
  deq_rows_bits<T, kIsaAvx2>(bits, a, r0, r1, codes, vals);
}
template <class T>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,f16c"))) void deq_avx512(int bits, const DeqArgs& a,
                                                                                   int64_t r0, int64_t r1,
                                                                                   uint8_t* codes,
                                                                                   float* vals) {
  deq_rows_bits<T, kIsaAvx512>(bits, a, r0, r1, codes, vals);
}
#endif

/// The variant for the SIMD path the fake-quant kernels use (cpu_isa()).
template <class T>
DeqFn<T> pick_deq() {
#ifdef EMPAS_X86_DISPATCH
  const char* isa = cpu_isa();
  if (std::strcmp(isa, "avx512") == 0) return &deq_avx512<T>;
  if (std::strcmp(isa, "avx2") == 0) return &deq_avx2<T>;
#endif
  return &deq_baseline<T>;
}

/// Rows [a.row0, a.row0 + rows).
template <class T>
void deq_run(const DeqArgs& a, int bits, int64_t rows, int num_threads) {
  const DeqFn<T> fn = pick_deq<T>();
  const int64_t r0 = a.row0;
  int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  threads = static_cast<int>(std::min<int64_t>({threads, rows, std::max<int64_t>(1, rows * a.cols / 65536)}));
  const size_t nvals = std::is_same_v<T, float> ? 0 : static_cast<size_t>(a.cols);
  if (threads <= 1) {
    std::vector<uint8_t> codes(static_cast<size_t>(a.cols));
    std::vector<float> vals(nvals);
    fn(bits, a, r0, r0 + rows, codes.data(), vals.data());
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    std::vector<uint8_t> codes(static_cast<size_t>(a.cols));
    std::vector<float> vals(nvals);
    fn(bits, a, r0 + rows * t / nt, r0 + rows * (t + 1) / nt, codes.data(), vals.data());
  }
}

}  // namespace

Status quantize_pack_cpu(const void* in, DType dtype, int64_t rows, int64_t cols, const FakeQuantParams& p,
                         uint8_t* qweight, Half* scales, uint8_t* zeros) {
  if (p.bits < 2 || p.bits > 8) return Status::kBadBits;
  if (rows < 0 || cols < 0 || (zeros == nullptr) != p.symmetric) return Status::kBadShape;
  if (dtype != DType::kFloat32 && dtype != DType::kFloat16 && dtype != DType::kBFloat16)
    return Status::kBadDType;
  if (rows == 0 || cols == 0) return Status::kOk;
  switch (dtype) {
    case DType::kFloat32:
      return pack_run(static_cast<const float*>(in), rows, cols, p, qweight, scales, zeros);
    case DType::kFloat16:
      return pack_run(static_cast<const Half*>(in), rows, cols, p, qweight, scales, zeros);
    case DType::kBFloat16:
      return pack_run(static_cast<const BFloat16*>(in), rows, cols, p, qweight, scales, zeros);
  }
  return Status::kBadDType;
}

Status dequant_cpu(const uint8_t* qweight, const Half* scales, const uint8_t* zeros, int64_t rows,
                   int64_t cols, int bits, int64_t group_size, DType out_dtype, void* out, int num_threads) {
  if (bits < 2 || bits > 8) return Status::kBadBits;
  if (rows < 0 || cols < 0) return Status::kBadShape;
  if (out_dtype != DType::kFloat32 && out_dtype != DType::kFloat16 && out_dtype != DType::kBFloat16)
    return Status::kBadDType;
  if (rows == 0 || cols == 0) return Status::kOk;
  DeqArgs a{
      qweight, scales, zeros, cols, effective_group_size(group_size, cols), num_groups(cols, group_size),
      out};
  switch (out_dtype) {
    case DType::kFloat32:
      deq_run<float>(a, bits, rows, num_threads);
      break;
    case DType::kFloat16:
      deq_run<Half>(a, bits, rows, num_threads);
      break;
    case DType::kBFloat16:
      deq_run<BFloat16>(a, bits, rows, num_threads);
      break;
  }
  return Status::kOk;
}

Status dequant_rows_cpu(const uint8_t* qweight, const Half* scales, const uint8_t* zeros, int64_t rows,
                        int64_t cols, int bits, int64_t group_size, int64_t r0, int64_t r1, DType out_dtype,
                        void* out, int num_threads) {
  if (bits < 2 || bits > 8) return Status::kBadBits;
  if (rows < 0 || cols < 0 || r0 < 0 || r1 < r0 || r1 > rows) return Status::kBadShape;
  if (out_dtype != DType::kFloat32 && out_dtype != DType::kFloat16 && out_dtype != DType::kBFloat16)
    return Status::kBadDType;
  if (r0 == r1 || cols == 0) return Status::kOk;
  DeqArgs a{
      qweight, scales, zeros, cols, effective_group_size(group_size, cols), num_groups(cols, group_size),
      out,     r0};
  switch (out_dtype) {
    case DType::kFloat32:
      deq_run<float>(a, bits, r1 - r0, num_threads);
      break;
    case DType::kFloat16:
      deq_run<Half>(a, bits, r1 - r0, num_threads);
      break;
    case DType::kBFloat16:
      deq_run<BFloat16>(a, bits, r1 - r0, num_threads);
      break;
  }
  return Status::kOk;
}

}  // namespace empas::kernels
