// The packing torch ops: schema (a fragment of the empas library), CPU and Meta
// implementations. The CUDA implementations live in pack_cuda_ops.cpp (CUDA
// builds only).
//
//   quantize_pack(Tensor w, int bits, int group_size=128, bool symmetric=True,
//                 bool clip_search=False) -> (Tensor qweight, Tensor scales, Tensor zeros)
//   dequant(Tensor qweight, Tensor scales, Tensor? zeros, int bits, int rows, int cols,
//           int group_size, ScalarType dtype) -> Tensor
//
// The storage format is described in cpp/kernels/include/empas/kernels/pack.hpp.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "pack_common.hpp"

namespace empas::ops {
namespace {

PackResult quantize_pack_cpu(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric,
                             bool clip_search) {
  check_args(w, bits, kPackOp);
  TORCH_CHECK(w.device().is_cpu(), kPackOp, ": expected a CPU tensor, got ", w.device());
  const int64_t rows = w.size(0), cols = w.size(1);
  auto out = empty_pack_outputs(rows, cols, bits, group_size, symmetric, w.options());
  if (w.numel() == 0) return out;
  const at::Tensor src = w.contiguous();
  auto p = make_params(bits, group_size, symmetric, clip_search);
  p.num_threads = at::get_num_threads();  // torch.set_num_threads applies
  auto& [qweight, scales, zeros] = out;
  check_status(
      kernels::quantize_pack_cpu(src.const_data_ptr(), static_cast<kernels::DType>(dtype_code(src, kPackOp)),
                                 rows, cols, p, qweight.mutable_data_ptr<uint8_t>(),
                                 reinterpret_cast<kernels::Half*>(scales.mutable_data_ptr<at::Half>()),
                                 symmetric ? nullptr : zeros.mutable_data_ptr<uint8_t>()),
      kPackOp);
  return out;
}

PackResult quantize_pack_meta(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric,
                              bool /*clip_search*/) {
  check_args(w, bits, kPackOp);
  return empty_pack_outputs_symint(w.sym_size(0), w.sym_size(1), bits, group_size, symmetric, w.options());
}

at::Tensor dequant_cpu(const at::Tensor& qweight, const at::Tensor& scales,
                       const std::optional<at::Tensor>& zeros, int64_t bits, int64_t rows, int64_t cols,
                       int64_t group_size, at::ScalarType dtype) {
  check_dequant_args(qweight, scales, zeros, bits, rows, cols, group_size, dtype);
  TORCH_CHECK(qweight.device().is_cpu(), kDequantOp, ": expected CPU tensors, got ", qweight.device());
  at::Tensor out = at::empty({rows, cols}, qweight.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const at::Tensor q = qweight.contiguous(), s = scales.contiguous();
  const at::Tensor z = has_zeros(zeros) ? zeros->contiguous() : at::Tensor();
  check_status(kernels::dequant_cpu(q.const_data_ptr<uint8_t>(),
                                    reinterpret_cast<const kernels::Half*>(s.const_data_ptr<at::Half>()),
                                    z.defined() ? z.const_data_ptr<uint8_t>() : nullptr, rows, cols,
                                    static_cast<int>(bits), group_size, out_dtype_code(dtype, kDequantOp),
                                    out.mutable_data_ptr(), at::get_num_threads()),
               kDequantOp);
  return out;
}

at::Tensor dequant_meta(const at::Tensor& qweight, const at::Tensor& scales,
                        const std::optional<at::Tensor>& zeros, int64_t bits, int64_t rows, int64_t cols,
                        int64_t group_size, at::ScalarType dtype) {
  check_dequant_args(qweight, scales, zeros, bits, rows, cols, group_size, dtype);
  return at::empty({rows, cols}, qweight.options().dtype(dtype));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(empas, m) {
  m.def(
      "quantize_pack(Tensor w, int bits, int group_size=128, bool symmetric=True, bool clip_search=False) "
      "-> (Tensor qweight, Tensor scales, Tensor zeros)");
  m.def(
      "dequant(Tensor qweight, Tensor scales, Tensor? zeros, int bits, int rows, int cols, int group_size, "
      "ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(empas, CPU, m) {
  m.impl("quantize_pack", &quantize_pack_cpu);
  m.impl("dequant", &dequant_cpu);
}

TORCH_LIBRARY_IMPL(empas, Meta, m) {
  m.impl("quantize_pack", &quantize_pack_meta);
  m.impl("dequant", &dequant_meta);
}

}  // namespace empas::ops
