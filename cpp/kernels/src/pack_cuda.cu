// CUDA dequant of packed weights (no torch headers). Same semantics as
// dequant_cpu in pack_cpu.cpp, bit for bit: out = (u - zero) * scale + 0.0f in
// fp32 with IEEE multiplication (__fmul_rn, no contraction; the library builds
// with --fmad=false), rounded to the output type with __float2half_rn /
// __float2bfloat16_rn.
//
// One thread per output element, grid-stride: thread e reads the one or two
// bytes holding bits [e * b, e * b + b) of the stream (never past its end),
// the group's fp16 scale and uint8 zero, and writes out[e]. Neighbouring
// threads read neighbouring bytes and write neighbouring outputs (coalesced).
//
// Quantize + pack has no CUDA kernel: the op adapter packs on the CPU (a copy
// to the host and back), see cpp/ops/pack_cuda_ops.cpp.
//
// NOTE: compiled (nvcc) but not run on the development machine (no GPU); the
// gpu tests in tests_py/test_pack.py compare it with the CPU op.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "empas/kernels/pack.hpp"

namespace empas::kernels {
namespace {

constexpr int kBlock = 256;

__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void st(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

template <class T>
__global__ void __launch_bounds__(kBlock)
    dequant_kernel(const uint8_t* __restrict__ qw, const __half* __restrict__ scales,
                   const uint8_t* __restrict__ zeros, int64_t total, int64_t cols, int64_t gs, int64_t groups,
                   int bits, T* __restrict__ out) {
  const uint32_t mask = (1u << bits) - 1u;
  const float half = static_cast<float>(1 << (bits - 1));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t bit = e * bits;
    const int sh = static_cast<int>(bit & 7);
    uint32_t v = qw[bit >> 3];
    if (sh + bits > 8) v |= static_cast<uint32_t>(qw[(bit >> 3) + 1]) << 8;
    const uint32_t u = (v >> sh) & mask;
    const int64_t r = e / cols, c = e - r * cols;
    const int64_t g = r * groups + c / gs;
    const float s = __half2float(scales[g]);
    const float z = zeros != nullptr ? static_cast<float>(zeros[g]) : half;
    st(out, e, __fadd_rn(__fmul_rn(__fsub_rn(static_cast<float>(u), z), s), 0.0f));
  }
}

template <class T>
Status launch(const uint8_t* qw, const __half* scales, const uint8_t* zeros, int64_t rows, int64_t cols,
              int bits, int64_t group_size, void* out, cudaStream_t stream) {
  const int64_t total = rows * cols;
  const int64_t gs = effective_group_size(group_size, cols);
  const int64_t groups = num_groups(cols, group_size);
  constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this
  const int64_t blocks = std::min<int64_t>((total + kBlock - 1) / kBlock, kMaxBlocks);
  dequant_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(qw, scales, zeros, total, cols, gs,
                                                                          groups, bits, static_cast<T*>(out));
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kCudaError;
}

}  // namespace

Status dequant_cuda(const uint8_t* qweight, const Half* scales, const uint8_t* zeros, int64_t rows,
                    int64_t cols, int bits, int64_t group_size, DType out_dtype, void* out, void* stream) {
  if (bits < 2 || bits > 8) return Status::kBadBits;
  if (rows < 0 || cols < 0) return Status::kBadShape;
  if (out_dtype != DType::kFloat32 && out_dtype != DType::kFloat16 && out_dtype != DType::kBFloat16)
    return Status::kBadDType;
  if (rows == 0 || cols == 0) return Status::kOk;
  auto s = static_cast<cudaStream_t>(stream);
  const auto* sc = reinterpret_cast<const __half*>(scales);  // layout-compatible (binary16 bits)
  switch (out_dtype) {
    case DType::kFloat32:
      return launch<float>(qweight, sc, zeros, rows, cols, bits, group_size, out, s);
    case DType::kFloat16:
      return launch<__half>(qweight, sc, zeros, rows, cols, bits, group_size, out, s);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(qweight, sc, zeros, rows, cols, bits, group_size, out, s);
  }
  return Status::kBadDType;
}

}  // namespace empas::kernels
