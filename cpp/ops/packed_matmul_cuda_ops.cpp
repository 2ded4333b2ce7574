// CUDA implementation of empas::packed_linear (CUDA builds only).
//  * decode (1..8 rows of x): the torch-free GEMV of
//    cpp/kernels/src/packed_matmul_cuda.cu on the current stream, in fp32 (x and
//    bias widened, the result rounded to x's dtype once);
//  * prefill (more rows): the weight is dequantized to x's dtype
//    (dequant_cuda) and multiplied by cuBLAS (at::matmul).
// Compiled but not run on the project's development machine (no GPU).
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "empas/kernels/packed_matmul.hpp"
#include "packed_matmul_common.hpp"

namespace empas::ops {
namespace {

constexpr int64_t kDecodeRows = 8;

at::Tensor packed_linear_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                              const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias,
                              int64_t bits, int64_t out_features, int64_t in_features, int64_t group_size) {
  const char* op = kPackedLinearOp;
  check_packed_linear_args(x, qweight, scales, zeros, bias, bits, out_features, in_features, group_size);
  TORCH_CHECK(qweight.is_cuda(), op, ": expected CUDA tensors, got ", qweight.device());
  const c10::cuda::CUDAGuard guard(qweight.device());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  const int64_t m = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  if (m == 0 || out_features == 0) return at::empty(shape, x.options());
  const at::Tensor q = qweight.contiguous(), s = scales.contiguous();
  const at::Tensor z = has_zeros(zeros) ? zeros->contiguous() : at::Tensor();
  const auto* sp = reinterpret_cast<const kernels::Half*>(s.const_data_ptr<at::Half>());
  const uint8_t* zp = z.defined() ? z.const_data_ptr<uint8_t>() : nullptr;
  const auto stream = c10::cuda::getCurrentCUDAStream(qweight.device().index());
  if (m <= kDecodeRows && in_features > 0) {
    const at::Tensor xf = x.reshape({m, in_features}).to(at::kFloat).contiguous();
    const at::Tensor bf = has_bias(bias) ? bias->to(at::kFloat).contiguous() : at::Tensor();
    at::Tensor y = at::empty({m, out_features}, x.options().dtype(at::kFloat));
    check_status(kernels::packed_matmul_cuda(xf.const_data_ptr<float>(), m, q.const_data_ptr<uint8_t>(), sp,
                                             zp, bf.defined() ? bf.const_data_ptr<float>() : nullptr,
                                             out_features, in_features, static_cast<int>(bits), group_size,
                                             y.mutable_data_ptr<float>(), stream.stream()),
                 op);
    return y.to(x.scalar_type()).reshape(shape);
  }
  at::Tensor w = at::empty({out_features, in_features}, x.options());
  if (w.numel() > 0)
    check_status(kernels::dequant_cuda(
                     q.const_data_ptr<uint8_t>(), sp, zp, out_features, in_features, static_cast<int>(bits),
                     group_size, out_dtype_code(x.scalar_type(), op), w.mutable_data_ptr(), stream.stream()),
                 op);
  at::Tensor y = at::matmul(x, w.t());
  if (has_bias(bias)) y.add_(bias->to(x.scalar_type()));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(empas, CUDA, m) { m.impl("packed_linear", &packed_linear_cuda); }

}  // namespace empas::ops
