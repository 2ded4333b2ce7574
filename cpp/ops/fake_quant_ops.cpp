// The empas torch ops: schema (TORCH_LIBRARY), CPU and Meta implementations.
// The CUDA implementation lives in fake_quant_cuda_ops.cpp (CUDA builds only).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "fake_quant_common.hpp"

namespace empas::ops {
namespace {

constexpr const char* kOp = "empas::fake_quant";
constexpr const char* kOpInplace = "empas::fake_quant_";

/// Runs the CPU kernel from src into dst (both contiguous, same shape and
/// dtype; src == dst is in place).
void run_cpu(const at::Tensor& src, const at::Tensor& dst, int64_t bits, int64_t group_size, bool symmetric,
             bool clip_search, const char* op) {
  auto p = make_params(bits, group_size, symmetric, clip_search);
  p.num_threads = at::get_num_threads();  // torch.set_num_threads applies
  const auto dtype = static_cast<kernels::DType>(dtype_code(src, op));
  check_status(
      kernels::fake_quant_cpu(src.const_data_ptr(), dst.data_ptr(), dtype, src.size(0), src.size(1), p), op);
}

at::Tensor fake_quant_cpu(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric,
                          bool clip_search) {
  check_args(w, bits, kOp);
  TORCH_CHECK(w.device().is_cpu(), kOp, ": expected a CPU tensor, got ", w.device());
  const at::Tensor src = w.contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options());  // contiguous, like the Meta kernel
  if (out.numel() > 0) run_cpu(src, out, bits, group_size, symmetric, clip_search, kOp);
  return out;
}

void fake_quant_inplace_cpu(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric,
                            bool clip_search) {
  check_args(w, bits, kOpInplace);
  TORCH_CHECK(w.device().is_cpu(), kOpInplace, ": expected a CPU tensor, got ", w.device());
  if (w.numel() == 0) return;
  if (w.is_contiguous()) {
    run_cpu(w, w, bits, group_size, symmetric, clip_search, kOpInplace);
  } else {  // e.g. w.t() of a GPT-2 Conv1D weight: quantize a copy, write it back
    at::Tensor tmp = w.contiguous();
    run_cpu(tmp, tmp, bits, group_size, symmetric, clip_search, kOpInplace);
    w.copy_(tmp);
  }
}

at::Tensor fake_quant_meta(const at::Tensor& w, int64_t bits, int64_t /*group_size*/, bool /*symmetric*/,
                           bool /*clip_search*/) {
  check_args(w, bits, kOp);
  return at::empty(w.sizes(), w.options());
}

void fake_quant_inplace_meta(const at::Tensor& w, int64_t bits, int64_t /*group_size*/, bool /*symmetric*/,
                             bool /*clip_search*/) {
  check_args(w, bits, kOpInplace);
}

/// What this library was built with, as JSON.
std::string build_info() {
  std::ostringstream os;
  os << "{\"version\": \"" << EMPAS_VERSION << "\", \"torch_version\": \"" << EMPAS_TORCH_VERSION
     << "\", \"cuda\": "
#ifdef EMPAS_OPS_CUDA
     << "true"
#else
     << "false"
#endif
     << ", \"cpu_isa\": \"" << kernels::cpu_isa() << "\"}";
  return os.str();
}

}  // namespace

TORCH_LIBRARY(empas, m) {
  m.def(
      "fake_quant(Tensor w, int bits, int group_size=128, bool symmetric=True, bool clip_search=False) -> "
      "Tensor");
  m.def(
      "fake_quant_(Tensor(a!) w, int bits, int group_size=128, bool symmetric=True, bool clip_search=False) "
      "-> "
      "()");
  m.def("build_info() -> str", &build_info);
}

TORCH_LIBRARY_IMPL(empas, CPU, m) {
  m.impl("fake_quant", &fake_quant_cpu);
  m.impl("fake_quant_", &fake_quant_inplace_cpu);
}

TORCH_LIBRARY_IMPL(empas, Meta, m) {
  m.impl("fake_quant", &fake_quant_meta);
  m.impl("fake_quant_", &fake_quant_inplace_meta);
}

}  // namespace empas::ops
