// Fused matmul with a packed weight, torch-free: y = x @ dequant(W)^T (+ bias)
// computed straight from the codes, scales (and zero points) of pack.hpp's
// layout, never building the dense weight.
//
// W is [out = rows, in = cols] in pack.hpp's storage (one LSB-first bit stream
// over the row-major matrix, fp16 scales [out, ngroups], uint8 zeros [out,
// ngroups] or nullptr for symmetric). Element (o, c) of the weight is
// (u - z) * s with u its code, s/z the scale/zero of its group, z = 2^(b-1)
// when symmetric, exactly as dequant_cpu computes it.
//
// Arithmetic (every path, every bit width 2..8): for each output element
// y[i, o], per group g, acc_g = sum over the group of float(u - z) * x[i, c]
// (fp32, the integer u - z is exact in fp32), and y[i, o] = sum_g s_g * acc_g
// + bias[o], in fp32. The summation order is fixed for a given SIMD path
// (cpu_isa(): 8 lanes on AVX2, 16 on AVX-512, 8 scalar lanes on the baseline),
// so the result does not depend on the thread count; the paths differ from each
// other (and from a dense matmul) only by fp32 rounding.
#pragma once

#include <cstdint>

#include "empas/kernels/fake_quant.hpp"
#include "empas/kernels/half.hpp"

namespace empas::kernels {

/// y[m x out] (fp32, row-major) = x[m x in] (fp32, row-major) @ dequant(W)^T
/// + bias (fp32 [out], nullptr for none). Any m >= 0; it is tuned for decode
/// (m <= 8: the weight is streamed once per 4 rows of x); for many rows,
/// dequantize tiles with dequant_rows_cpu and call a GEMM. OpenMP over blocks
/// of output rows (num_threads, 0 = the runtime's default); each output element
/// is computed by one thread in a fixed order, so the result does not depend on
/// the thread count. Reads exactly packed_bytes(out, in, bits) bytes of qweight.
/// Errors: kBadBits, kBadShape.
Status packed_matmul_cpu(const float* x, int64_t m, const uint8_t* qweight, const Half* scales,
                         const uint8_t* zeros, const float* bias, int64_t out_features, int64_t in_features,
                         int bits, int64_t group_size, float* y, int num_threads);

/// The same for x and y of any of the three dtypes (x widened to fp32 on load,
/// y computed in fp32 and rounded to y_dtype once, to nearest even). Also
/// kBadDType.
Status packed_matmul_cpu(const void* x, DType x_dtype, int64_t m, const uint8_t* qweight, const Half* scales,
                         const uint8_t* zeros, const float* bias, int64_t out_features, int64_t in_features,
                         int bits, int64_t group_size, void* y, DType y_dtype, int num_threads);

/// True when packed_matmul_a8_cpu runs its int8-activation kernel for this
/// layer: bits in {2, 4, 8}, and in_features and the (effective) group size
/// multiples of 64 (128 for 2-bit). Otherwise it runs packed_matmul_cpu.
bool packed_matmul_a8_applies(int bits, int64_t in_features, int64_t group_size);

/// packed_matmul_cpu with x quantized to int8 (llama.cpp's q4_0 x q8_0 idea):
/// per block of 64 elements of each row of x, dx = amax / 127 and q =
/// rint(x * (127 / amax)) (half to even, in [-127, 127]); then y[i, o] =
/// sum_g s_g * sum_blocks dx_b * sum_e (u_e - z_g) * q_e + bias[o], the inner
/// sums exact in int32, the rest in fp32 (packed_matmul_a8_cpu.cpp). So y is
/// the exact product with x replaced by q * dx, up to fp32 rounding: |y -
/// x @ W^T| <= sum_e |W[o, e]| * dx_b(e) / 2 plus fp32 rounding. AVX2 (also on
/// AVX-512 CPUs) and the baseline agree bit for bit; the thread count does not
/// change the result. When it does not apply (packed_matmul_a8_applies false,
/// or x holds NaN/Inf) the exact kernel runs. Errors as packed_matmul_cpu.
Status packed_matmul_a8_cpu(const float* x, int64_t m, const uint8_t* qweight, const Half* scales,
                            const uint8_t* zeros, const float* bias, int64_t out_features,
                            int64_t in_features, int bits, int64_t group_size, float* y, int num_threads);

/// The same for x and y of any of the three dtypes (as packed_matmul_cpu's).
Status packed_matmul_a8_cpu(const void* x, DType x_dtype, int64_t m, const uint8_t* qweight,
                            const Half* scales, const uint8_t* zeros, const float* bias, int64_t out_features,
                            int64_t in_features, int bits, int64_t group_size, void* y, DType y_dtype,
                            int num_threads);

/// Dequantizes rows [r0, r1) of a packed [rows x cols] weight into
/// out[(r1 - r0) x cols] (row-major, out_dtype): the same values as
/// dequant_cpu's rows r0..r1-1. r0 need not start on a byte of the stream.
/// Errors: kBadBits, kBadShape (also for a bad row range), kBadDType.
Status dequant_rows_cpu(const uint8_t* qweight, const Half* scales, const uint8_t* zeros, int64_t rows,
                        int64_t cols, int bits, int64_t group_size, int64_t r0, int64_t r1, DType out_dtype,
                        void* out, int num_threads);

#ifdef EMPAS_WITH_CUDA
/// CUDA GEMV for decode: x [m x in] fp32 and y [m x out] fp32 device buffers,
/// 1 <= m <= 8 (kBadShape otherwise), bias fp32 [out] or nullptr; qweight,
/// scales, zeros device pointers as in dequant_cuda. One warp per output row,
/// lanes over the row's elements, a fixed-order warp reduction (deterministic).
/// Asynchronous on stream (a cudaStream_t, nullptr: the default stream).
Status packed_matmul_cuda(const float* x, int64_t m, const uint8_t* qweight, const Half* scales,
                          const uint8_t* zeros, const float* bias, int64_t out_features, int64_t in_features,
                          int bits, int64_t group_size, float* y, void* stream);
#endif

}  // namespace empas::kernels
