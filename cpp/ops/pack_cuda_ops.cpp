// CUDA implementation of the packing ops (CUDA builds only).
//  * dequant: the torch-free kernel of cpp/kernels/src/pack_cuda.cu on the
//    current stream (asynchronous, no host synchronization).
//  * quantize_pack: no CUDA kernel; w is copied to the host, packed by the CPU
//    kernel, and the three outputs are copied back to w's device (packing is
//    done once per weight, dequant on every forward pass).
// Compiled but not run on the project's development machine (no GPU).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pack_common.hpp"

namespace empas::ops {
namespace {

PackResult quantize_pack_cuda(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric,
                              bool clip_search) {
  check_args(w, bits, kPackOp);
  TORCH_CHECK(w.is_cuda(), kPackOp, ": expected a CUDA tensor, got ", w.device());
  const c10::cuda::CUDAGuard guard(w.device());
  static const auto cpu_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("empas::quantize_pack", "")
                                 .typed<PackResult(const at::Tensor&, int64_t, int64_t, bool, bool)>();
  auto [q, s, z] = cpu_op.call(w.cpu(), bits, group_size, symmetric, clip_search);
  return {q.to(w.device()), s.to(w.device()), z.to(w.device())};
}

at::Tensor dequant_cuda(const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& zeros, int64_t bits, int64_t rows, int64_t cols,
                        int64_t group_size, at::ScalarType dtype) {
  check_dequant_args(qweight, scales, zeros, bits, rows, cols, group_size, dtype);
  TORCH_CHECK(qweight.is_cuda(), kDequantOp, ": expected CUDA tensors, got ", qweight.device());
  const c10::cuda::CUDAGuard guard(qweight.device());
  at::Tensor out = at::empty({rows, cols}, qweight.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const at::Tensor q = qweight.contiguous(), s = scales.contiguous();
  const at::Tensor z = has_zeros(zeros) ? zeros->contiguous() : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream(qweight.device().index());
  check_status(kernels::dequant_cuda(q.const_data_ptr<uint8_t>(),
                                     reinterpret_cast<const kernels::Half*>(s.const_data_ptr<at::Half>()),
                                     z.defined() ? z.const_data_ptr<uint8_t>() : nullptr, rows, cols,
                                     static_cast<int>(bits), group_size, out_dtype_code(dtype, kDequantOp),
                                     out.mutable_data_ptr(), stream.stream()),
               kDequantOp);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(empas, CUDA, m) {
  m.impl("quantize_pack", &quantize_pack_cuda);
  m.impl("dequant", &dequant_cuda);
}

}  // namespace empas::ops
