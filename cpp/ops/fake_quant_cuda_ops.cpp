// CUDA implementation of the empas fake-quant ops (CUDA builds only): runs the
// torch-free launcher of cpp/kernels/src/fake_quant_cuda.cu on the current
// stream. Compiled but not run on the project's development machine (no GPU).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fake_quant_common.hpp"

namespace empas::ops {
namespace {

constexpr const char* kOp = "empas::fake_quant";
constexpr const char* kOpInplace = "empas::fake_quant_";

/// src -> dst on w's device (src == dst is in place). The kernel reports
/// NaN/Inf or a scale overflow through a device int, read back here (this
/// synchronizes the stream).
void run_cuda(const at::Tensor& src, const at::Tensor& dst, int64_t bits, int64_t group_size, bool symmetric,
              bool clip_search, const char* op) {
  const auto p = make_params(bits, group_size, symmetric, clip_search);
  at::Tensor status = at::zeros({1}, src.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream(src.device().index());
  check_status(kernels::fake_quant_cuda(src.const_data_ptr(), dst.data_ptr(), dtype_code(src, op),
                                        src.size(0), src.size(1), p, stream.stream(), status.data_ptr<int>()),
               op);
  check_status(static_cast<kernels::Status>(status.item<int>()), op);
}

at::Tensor fake_quant_cuda(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric,
                           bool clip_search) {
  check_args(w, bits, kOp);
  TORCH_CHECK(w.is_cuda(), kOp, ": expected a CUDA tensor, got ", w.device());
  const c10::cuda::CUDAGuard guard(w.device());
  const at::Tensor src = w.contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options());
  if (out.numel() > 0) run_cuda(src, out, bits, group_size, symmetric, clip_search, kOp);
  return out;
}

void fake_quant_inplace_cuda(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric,
                             bool clip_search) {
  check_args(w, bits, kOpInplace);
  TORCH_CHECK(w.is_cuda(), kOpInplace, ": expected a CUDA tensor, got ", w.device());
  const c10::cuda::CUDAGuard guard(w.device());
  if (w.numel() == 0) return;
  if (w.is_contiguous()) {
    run_cuda(w, w, bits, group_size, symmetric, clip_search, kOpInplace);
  } else {
    at::Tensor tmp = w.contiguous();
    run_cuda(tmp, tmp, bits, group_size, symmetric, clip_search, kOpInplace);
    w.copy_(tmp);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(empas, CUDA, m) {
  m.impl("fake_quant", &fake_quant_cuda);
  m.impl("fake_quant_", &fake_quant_inplace_cuda);
}

}  // namespace empas::ops
