// Fake quantization (quantize -> dequantize) of a 2-D weight matrix, torch-free.
//
// W is row-major [rows = out_features, cols = in_features]; groups run along
// cols: group_size g > 0 splits each row into ceil(cols / g) groups (the last
// one shorter when g does not divide cols), g <= 0 makes one group per row (per
// output channel). All arithmetic is fp32; fp16/bf16 inputs are widened on load
// and the result is rounded back to the input type (round to nearest even).
//
// Per group, b = bits in [2, 8]:
//  * symmetric (2^b levels, llama.cpp style): m = the element of largest |w|
//    (signed, first on ties); d = fp16(m / -2^(b-1)); d == 0 -> zeros;
//    q = clamp(rint(w / d), -2^(b-1), 2^(b-1) - 1); out = q * d.
//  * asymmetric: lo = min w, hi = max w; s = fp16((hi - lo) / (2^b - 1));
//    s == 0 -> the input unchanged; z = clamp(rint(-lo / s), 0, 2^b - 1);
//    q = clamp(rint(w / s) + z, 0, 2^b - 1); out = (q - z) * s.
//  fp16(x) is x rounded to binary16 and back (scales are stored as fp16), rint
//  rounds half to even, w / d is a true IEEE division, and a zero result is
//  +0.0 (never -0.0).
//  * clip_search: ratios r_k = float(1 - k / 20), k = 0..10 (1.0 down to 0.5)
//    scale m (symmetric) or lo and hi (asymmetric) before the scale is formed;
//    each ratio's error is the sum over the group of (out - w)^2, with out and
//    w in fp32, the difference in fp32 and the squares summed in double
//    (summation order unspecified); the smallest error wins, the largest r on
//    ties.
#pragma once

#include <cstdint>

#include "empas/kernels/half.hpp"

namespace empas::kernels {

/// Element type of a buffer: values match the ops' dtype codes.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct FakeQuantParams {
  int bits = 4;              ///< 2..8
  int64_t group_size = 128;  ///< elements per group along cols; <= 0: one group per row
  bool symmetric = true;     ///< false: asymmetric (min/max with a zero point)
  bool clip_search = false;  ///< search the clipping ratio per group (11 ratios)
  int num_threads = 0;       ///< CPU only: OpenMP threads, 0 = the runtime's default
};

enum class Status : int {
  kOk = 0,
  kBadBits = 1,        ///< bits outside 2..8
  kBadShape = 2,       ///< negative rows or cols
  kNonFinite = 3,      ///< the weight contains NaN or Inf
  kScaleOverflow = 4,  ///< a group's scale overflows fp16 (|scale| > 65504)
  kCudaError = 5,      ///< a CUDA launch or runtime error
  kBadDType = 6,       ///< dtype code not float32/float16/bfloat16
};

/// A sentence for a status, e.g. "weight contains NaN or Inf".
const char* status_message(Status s);

/// Elements per group for this many cols (cols when group_size <= 0 or > cols).
inline int64_t effective_group_size(int64_t group_size, int64_t cols) {
  return (group_size <= 0 || group_size > cols) ? cols : group_size;
}

/// Number of clipping ratios tried by clip_search, and ratio k (fp32).
constexpr int kClipRatios = 11;
inline float clip_ratio(int k) { return static_cast<float>(1.0 - k / 20.0); }

/// Fake-quantizes in[rows x cols] (row-major, contiguous) into out. in == out
/// (in place) is allowed; otherwise the buffers must not overlap. Empty
/// matrices are a no-op. On an error status, groups that were already
/// processed have been written (so an in-place call may leave w partly
/// quantized); groups holding NaN/Inf are never written.
Status fake_quant_cpu(const float* in, float* out, int64_t rows, int64_t cols, const FakeQuantParams& p);
Status fake_quant_cpu(const Half* in, Half* out, int64_t rows, int64_t cols, const FakeQuantParams& p);
Status fake_quant_cpu(const BFloat16* in, BFloat16* out, int64_t rows, int64_t cols,
                      const FakeQuantParams& p);
/// The same, dispatching on dtype.
Status fake_quant_cpu(const void* in, void* out, DType dtype, int64_t rows, int64_t cols,
                      const FakeQuantParams& p);

/// The SIMD path the CPU kernels use, chosen at run time from what the CPU
/// supports: "avx512", "avx2" (with F16C) or "baseline" (the compiler's
/// default ISA). All paths give bit-identical results.
const char* cpu_isa();

/// Caps the SIMD path ("avx512", "avx2", "baseline"; "auto" = the best the CPU
/// has), for tests and benchmarks; false (and no change) when the CPU lacks it
/// or the name is unknown. Process-wide.
bool set_cpu_isa(const char* name);

#ifdef EMPAS_WITH_CUDA
/// CUDA launcher: in/out are device pointers of dtype (in == out allowed),
/// stream is a cudaStream_t (nullptr: the default stream). status_dev, when not
/// null, is a device int that must hold 0 before the launch; the kernel stores a
/// non-zero Status there on NaN/Inf or scale overflow (read it after the stream
/// synchronizes). Returns kCudaError if the launch fails, else kOk or a
/// parameter error. Asynchronous.
Status fake_quant_cuda(const void* in, void* out, int dtype, int64_t rows, int64_t cols,
                       const FakeQuantParams& p, void* stream, int* status_dev);
#endif

}  // namespace empas::kernels
