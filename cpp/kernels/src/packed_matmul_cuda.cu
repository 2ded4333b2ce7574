// CUDA GEMV for decode with a packed weight (no torch headers): y[m x out] =
// x[m x in] @ dequant(W)^T + bias for 1 <= m <= 8, fp32 in and out (the op
// adapter converts), packed_matmul.hpp's semantics.
//
// One warp per output row o (8 warps per block). The lanes of the warp walk
// the row 8 consecutive elements at a time (lane l takes elements
// [8 * (l + 32 k), 8 * (l + 32 k) + 8)), so that the warp reads 32 adjacent
// 8-element blocks of the stream at once (coalesced). A block's codes come from
// one 32-bit load when bits == 4 and the row starts on a 4-byte boundary of the
// stream (o * in a multiple of 8, the stream 4-byte aligned), else element by element from the one or two
// bytes holding each code (any alignment, never past the stream's end). Each
// weight is (u - z) * s in fp32 (exact), multiplied into per-row fp32 lane
// sums; the lanes are combined by a fixed butterfly (__shfl_xor_sync), so the
// result is deterministic.
//
// NOTE: compiled (nvcc) but not run on the development machine (no GPU); the
// gpu test in tests_py/test_packed_matmul.py compares it with the CPU op.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "empas/kernels/pack.hpp"
#include "empas/kernels/packed_matmul.hpp"

namespace empas::kernels {
namespace {

constexpr int kWarps = 8;  // output rows per block

__device__ __forceinline__ uint32_t code_at(const uint8_t* __restrict__ qw, int64_t e, int bits) {
  const int64_t bit = e * bits;
  const int sh = static_cast<int>(bit & 7);
  uint32_t v = qw[bit >> 3];
  if (sh + bits > 8) v |= static_cast<uint32_t>(qw[(bit >> 3) + 1]) << 8;
  return (v >> sh) & ((1u << bits) - 1u);
}

template <int MR>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const float* __restrict__ x, const uint8_t* __restrict__ qw,
                const __half* __restrict__ scales, const uint8_t* __restrict__ zeros,
                const float* __restrict__ bias, int64_t out, int64_t in, int64_t gs, int64_t groups, int bits,
                float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (o >= out) return;  // a whole warp leaves together
  const float zsym = static_cast<float>(1 << (bits - 1));
  const int64_t e0 = o * in;
  const bool word4 = bits == 4 && (e0 & 7) == 0 && (reinterpret_cast<uintptr_t>(qw) & 3) == 0;
  float acc[MR];
#pragma unroll
  for (int i = 0; i < MR; ++i) acc[i] = 0.0f;
  for (int64_t c0 = static_cast<int64_t>(lane) * 8; c0 < in; c0 += 32 * 8) {
    const int64_t n = min(static_cast<int64_t>(8), in - c0);
    uint32_t word = 0;
    if (word4 && n == 8) word = *reinterpret_cast<const uint32_t*>(qw + (e0 + c0) / 2);
    for (int j = 0; j < n; ++j) {
      const int64_t c = c0 + j;
      const uint32_t u = (word4 && n == 8) ? (word >> (4 * j)) & 15u : code_at(qw, e0 + c, bits);
      const int64_t g = o * groups + c / gs;
      const float z = zeros != nullptr ? static_cast<float>(zeros[g]) : zsym;
      const float w = __fmul_rn(__fsub_rn(static_cast<float>(u), z), __half2float(scales[g]));
#pragma unroll
      for (int i = 0; i < MR; ++i) acc[i] = __fmaf_rn(w, x[i * in + c], acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < MR; ++i) {
    float v = acc[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
    if (lane == 0) y[i * out + o] = __fadd_rn(v, bias != nullptr ? bias[o] : 0.0f);
  }
}

template <int MR>
Status launch(const float* x, const uint8_t* qw, const __half* scales, const uint8_t* zeros,
              const float* bias, int64_t out, int64_t in, int bits, int64_t group_size, float* y,
              cudaStream_t stream) {
  const int64_t gs = effective_group_size(group_size, in);
  const int64_t groups = num_groups(in, group_size);
  const int64_t blocks = (out + kWarps - 1) / kWarps;
  if (blocks > 0x7fffffff) return Status::kBadShape;
  gemv_kernel<MR><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(x, qw, scales, zeros, bias, out,
                                                                             in, gs, groups, bits, y);
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kCudaError;
}

}  // namespace

Status packed_matmul_cuda(const float* x, int64_t m, const uint8_t* qweight, const Half* scales,
                          const uint8_t* zeros, const float* bias, int64_t out_features, int64_t in_features,
                          int bits, int64_t group_size, float* y, void* stream) {
  if (bits < 2 || bits > 8) return Status::kBadBits;
  if (m < 1 || m > 8 || out_features < 0 || in_features < 1) return Status::kBadShape;
  if (out_features == 0) return Status::kOk;
  auto s = static_cast<cudaStream_t>(stream);
  const auto* sc = reinterpret_cast<const __half*>(scales);
  switch (m) {
#define EMPAS_GEMV_CASE(k) \
  case k:                  \
    return launch<k>(x, qweight, sc, zeros, bias, out_features, in_features, bits, group_size, y, s);
    EMPAS_GEMV_CASE(1)
    EMPAS_GEMV_CASE(2)
    EMPAS_GEMV_CASE(3)
    EMPAS_GEMV_CASE(4)
    EMPAS_GEMV_CASE(5)
    EMPAS_GEMV_CASE(6)
    EMPAS_GEMV_CASE(7)
    EMPAS_GEMV_CASE(8)
#undef EMPAS_GEMV_CASE
  }
  return Status::kBadShape;
}

}  // namespace empas::kernels
