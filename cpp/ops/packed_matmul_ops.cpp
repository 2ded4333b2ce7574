// The fused packed linear op: schema, CPU and Meta implementations (the CUDA
// one lives in packed_matmul_cuda_ops.cpp, CUDA builds only).
//
//   packed_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, Tensor? bias, int bits,
//                 int out_features, int in_features, int group_size) -> Tensor
//
// y = x @ dequant(W)^T + bias for x [..., in] (float32/float16/bfloat16),
// returned in x's dtype with shape [..., out]. Arithmetic in fp32 throughout:
// x and bias are widened to fp32, the result is rounded to x's dtype once.
//  * decode (at most kDecodeRows rows of x): the torch-free fused kernel
//    (cpp/kernels/src/packed_matmul_cpu.cpp), which never builds the weight;
//  * prefill (more rows): W is dequantized kTileBytes of fp32 (at least
//    kTileMinRows rows) at a time
//    (dequant_rows_cpu) into one reused buffer and each tile goes through
//    torch's fp32 GEMM (at::mm_out); the dense weight is never built whole.
//
//   packed_linear_a8(...same...) -> Tensor: the same with x quantized to int8 per
//   block of 64 in the decode kernel (packed_matmul_a8_cpu: 2/4/8-bit layers whose
//   in_features and group size are multiples of 64, 128 for 2-bit; the exact
//   kernel otherwise); prefill (more rows) is the exact tiled path. CPU and Meta.
//   packed_linear_a8_applies(int bits, int in_features, int group_size) -> bool.
//
//   set_cpu_isa(str isa) -> bool: caps the SIMD path of this library's CPU
//   kernels ("avx512", "avx2", "baseline", "auto"), for tests and benchmarks.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "empas/kernels/packed_matmul.hpp"
#include "packed_matmul_common.hpp"

namespace empas::ops {
namespace {

constexpr const char* kPackedLinearA8Op = "empas::packed_linear_a8";
constexpr int64_t kDecodeRows = 8;                // rows of x up to which the fused kernel runs
constexpr int64_t kTileBytes = int64_t{1} << 23;  // fp32 bytes of W per prefill tile (8 MiB)
constexpr int64_t kTileMinRows = 1024;            // ... but at least this many rows: narrow GEMMs are slow

at::Tensor packed_linear_impl(const char* op, bool int8_activations, const at::Tensor& x,
                              const at::Tensor& qweight, const at::Tensor& scales,
                              const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias,
                              int64_t bits, int64_t out_features, int64_t in_features, int64_t group_size) {
  check_packed_linear_args(x, qweight, scales, zeros, bias, bits, out_features, in_features, group_size, op);
  TORCH_CHECK(qweight.device().is_cpu(), op, ": expected CPU tensors, got ", qweight.device());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  const int64_t m = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  const auto f32 = x.options().dtype(at::kFloat);
  if (m == 0 || out_features == 0) return at::empty(shape, x.options());
  const at::Tensor bf = has_bias(bias) ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor q = qweight.contiguous(), s = scales.contiguous();
  const at::Tensor z = has_zeros(zeros) ? zeros->contiguous() : at::Tensor();
  const auto* sp = reinterpret_cast<const kernels::Half*>(s.const_data_ptr<at::Half>());
  const uint8_t* zp = z.defined() ? z.const_data_ptr<uint8_t>() : nullptr;
  const int threads = at::get_num_threads();
  if (m <= kDecodeRows || in_features == 0) {
    // x and y in their own dtype: the kernel widens and rounds (no extra ATen copies).
    const at::Tensor xc = x.contiguous();
    at::Tensor y = at::empty(shape, x.options());
    const kernels::DType dt = out_dtype_code(x.scalar_type(), op);
    using Kernel = kernels::Status (*)(const void*, kernels::DType, int64_t, const uint8_t*,
                                       const kernels::Half*, const uint8_t*, const float*, int64_t, int64_t,
                                       int, int64_t, void*, kernels::DType, int);
    const Kernel kernel =
        int8_activations ? Kernel{&kernels::packed_matmul_a8_cpu} : Kernel{&kernels::packed_matmul_cpu};
    check_status(kernel(xc.const_data_ptr(), dt, m, q.const_data_ptr<uint8_t>(), sp, zp,
                        bf.defined() ? bf.const_data_ptr<float>() : nullptr, out_features, in_features,
                        static_cast<int>(bits), group_size, y.mutable_data_ptr(), dt, threads),
                 op);
    return y;
  }
  const at::Tensor xf = x.reshape({m, in_features}).to(at::kFloat).contiguous();
  at::Tensor y;
  {
    // Each tile of W rows [r0, r0 + n) gives the columns [r0, r0 + n) of y: a
    // strided block (leading dimension out) that the GEMM writes in place.
    const int64_t tile =
        std::min<int64_t>(std::max<int64_t>(kTileBytes / (4 * in_features), kTileMinRows), out_features);
    y = at::empty({m, out_features}, f32);
    at::Tensor w = at::empty({tile, in_features}, f32);
    for (int64_t r0 = 0; r0 < out_features; r0 += tile) {
      const int64_t n = std::min(tile, out_features - r0);
      check_status(kernels::dequant_rows_cpu(q.const_data_ptr<uint8_t>(), sp, zp, out_features, in_features,
                                             static_cast<int>(bits), group_size, r0, r0 + n,
                                             kernels::DType::kFloat32, w.mutable_data_ptr(), threads),
                   op);
      at::Tensor dst = y.narrow(1, r0, n);
      at::mm_out(dst, xf, w.narrow(0, 0, n).t());
    }
    if (bf.defined()) y.add_(bf);
  }
  return y.to(x.scalar_type()).reshape(shape);
}

at::Tensor packed_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias,
                             int64_t bits, int64_t out_features, int64_t in_features, int64_t group_size) {
  return packed_linear_impl(kPackedLinearOp, false, x, qweight, scales, zeros, bias, bits, out_features,
                            in_features, group_size);
}

at::Tensor packed_linear_a8_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                                const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias,
                                int64_t bits, int64_t out_features, int64_t in_features, int64_t group_size) {
  return packed_linear_impl(kPackedLinearA8Op, true, x, qweight, scales, zeros, bias, bits, out_features,
                            in_features, group_size);
}

at::Tensor packed_linear_meta_impl(const char* op, const at::Tensor& x, const at::Tensor& qweight,
                                   const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                                   const std::optional<at::Tensor>& bias, int64_t bits, int64_t out_features,
                                   int64_t in_features, int64_t group_size) {
  check_packed_linear_args(x, qweight, scales, zeros, bias, bits, out_features, in_features, group_size, op);
  return at::empty_symint(packed_linear_out_shape(x, out_features), x.options());
}

at::Tensor packed_linear_meta(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                              const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias,
                              int64_t bits, int64_t out_features, int64_t in_features, int64_t group_size) {
  return packed_linear_meta_impl(kPackedLinearOp, x, qweight, scales, zeros, bias, bits, out_features,
                                 in_features, group_size);
}

at::Tensor packed_linear_a8_meta(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                                 const std::optional<at::Tensor>& zeros,
                                 const std::optional<at::Tensor>& bias, int64_t bits, int64_t out_features,
                                 int64_t in_features, int64_t group_size) {
  return packed_linear_meta_impl(kPackedLinearA8Op, x, qweight, scales, zeros, bias, bits, out_features,
                                 in_features, group_size);
}

bool set_cpu_isa(const std::string& isa) { return kernels::set_cpu_isa(isa.c_str()); }

bool a8_applies(int64_t bits, int64_t in_features, int64_t group_size) {
  return kernels::packed_matmul_a8_applies(static_cast<int>(bits), in_features, group_size);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(empas, m) {
  m.def(
      "packed_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, Tensor? bias, int bits, "
      "int out_features, int in_features, int group_size) -> Tensor");
  m.def(
      "packed_linear_a8(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, Tensor? bias, int bits, "
      "int out_features, int in_features, int group_size) -> Tensor");
  m.def("packed_linear_a8_applies(int bits, int in_features, int group_size) -> bool", &a8_applies);
  m.def("set_cpu_isa(str isa) -> bool", &set_cpu_isa);
}

TORCH_LIBRARY_IMPL(empas, CPU, m) {
  m.impl("packed_linear", &packed_linear_cpu);
  m.impl("packed_linear_a8", &packed_linear_a8_cpu);
}

TORCH_LIBRARY_IMPL(empas, Meta, m) {
  m.impl("packed_linear", &packed_linear_meta);
  m.impl("packed_linear_a8", &packed_linear_a8_meta);
}

}  // namespace empas::ops
