// Real packed weights, torch-free: quantize + bit-pack a 2-D weight, and
// dequantize the packed form back to fp32/fp16/bf16.
//
// Storage for W [rows = out_features, cols = in_features], b = bits in 2..8,
// groups along cols exactly as in fake_quant.hpp (gs = effective_group_size,
// ngroups = ceil(cols / gs), 0 when cols == 0):
//  * qweight: packed_bytes(rows, cols, b) = ceil(rows * cols * b / 8) bytes, ONE
//    little-endian bit stream over the matrix in row-major order: element
//    e = r * cols + c holds its unsigned code u in [0, 2^b) at stream bits
//    [e * b, e * b + b), and stream bit k is bit (k % 8) of byte k / 8 (LSB
//    first). The unused high bits of the last byte are 0.
//  * scales: fp16 [rows, ngroups] (row-major).
//  * zeros: uint8 [rows, ngroups] when asymmetric; none (nullptr) when symmetric.
//
// The codes come from the fake-quant quantizer itself (same scale, bounds and
// clip-search choice, shared code), so that dequant(pack(w)) == fake_quant(w)
// bit for bit, except for the asymmetric "copy" groups below:
//  * symmetric: u = q + 2^(b-1) with fake_quant's q in [-2^(b-1), 2^(b-1) - 1];
//    scale = d (signed fp16; a group whose d is 0 stores d (+-0) and u = 2^(b-1)).
//    Dequant: out = (u - 2^(b-1)) * d + 0.0f in fp32, rounded to the output dtype.
//  * asymmetric: u = fake_quant's q in [0, 2^b), scale s, zero z.
//    Dequant: out = (u - z) * s + 0.0f in fp32, rounded to the output dtype.
//  * asymmetric groups where fake_quant's chosen fp16 scale s is 0 (max - min
//    rounds to an fp16 zero scale: a constant group, or nearly so; fake_quant
//    returns such a group unchanged): there is no way to store the input, so
//    pack stores scale = fp16(min), zero = 0 and every code = 1 (dequant: fp16(min)
//    for the whole group), or scale = 0, zero = 0, codes 0 when fp16(min) is 0.
//    Such groups (and only they) differ from fake_quant: by at most
//    max - min + |min - fp16(min)|. A min beyond the fp16 range is
//    kScaleOverflow.
#pragma once

#include <cstdint>

#include "empas/kernels/fake_quant.hpp"
#include "empas/kernels/half.hpp"

namespace empas::kernels {

/// Bytes of the packed bit stream: ceil(rows * cols * bits / 8).
inline int64_t packed_bytes(int64_t rows, int64_t cols, int bits) { return (rows * cols * bits + 7) / 8; }

/// Groups per row (0 when cols == 0).
inline int64_t num_groups(int64_t cols, int64_t group_size) {
  if (cols <= 0) return 0;
  const int64_t gs = effective_group_size(group_size, cols);
  return (cols + gs - 1) / gs;
}

/// Quantizes in[rows x cols] (row-major, contiguous, dtype) and packs it:
/// qweight gets packed_bytes(rows, cols, p.bits) bytes, scales rows x ngroups
/// fp16, zeros rows x ngroups (asymmetric; must be nullptr when p.symmetric,
/// and non-null otherwise, else kBadShape). OpenMP over blocks of rows whose bit
/// stream starts on a byte boundary, so no two threads write the same byte;
/// the output does not depend on the thread count (p.num_threads, 0 = the
/// runtime's default). Errors: kBadBits, kBadShape, kBadDType, kNonFinite (NaN or
/// Inf), kScaleOverflow (a scale beyond fp16, as fake_quant); on an error the
/// outputs are unspecified.
Status quantize_pack_cpu(const void* in, DType dtype, int64_t rows, int64_t cols, const FakeQuantParams& p,
                         uint8_t* qweight, Half* scales, uint8_t* zeros);

/// Dequantizes a packed weight into out[rows x cols] (row-major, out_dtype).
/// zeros == nullptr means symmetric. Reads exactly packed_bytes(rows, cols,
/// bits) bytes of qweight. OpenMP over rows (num_threads, 0 = the runtime's
/// default). Errors: kBadBits, kBadShape, kBadDType.
Status dequant_cpu(const uint8_t* qweight, const Half* scales, const uint8_t* zeros, int64_t rows,
                   int64_t cols, int bits, int64_t group_size, DType out_dtype, void* out, int num_threads);

#ifdef EMPAS_WITH_CUDA
/// CUDA dequant: all pointers are device pointers (zeros == nullptr:
/// symmetric), stream is a cudaStream_t (nullptr: the default stream).
/// Asynchronous; returns kCudaError if the launch fails, else kOk or a
/// parameter error. Same results as dequant_cpu, bit for bit.
Status dequant_cuda(const uint8_t* qweight, const Half* scales, const uint8_t* zeros, int64_t rows,
                    int64_t cols, int bits, int64_t group_size, DType out_dtype, void* out, void* stream);
#endif

}  // namespace empas::kernels
