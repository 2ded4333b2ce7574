// Shared by the CPU/Meta and CUDA adapters of the fake-quant ops: argument
// checks and the translation to the torch-free kernel parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "empas/kernels/fake_quant.hpp"

namespace empas::ops {

/// The kernels' dtype code of w (TORCH_CHECK-fails for other dtypes).
inline int dtype_code(const at::Tensor& w, const char* op) {
  switch (w.scalar_type()) {
    case at::kFloat:
      return static_cast<int>(kernels::DType::kFloat32);
    case at::kHalf:
      return static_cast<int>(kernels::DType::kFloat16);
    case at::kBFloat16:
      return static_cast<int>(kernels::DType::kBFloat16);
    default:
      TORCH_CHECK(false, op, ": w must be float32, float16 or bfloat16, got ", w.scalar_type());
  }
}

/// Checks what every implementation (Meta included) must reject.
inline void check_args(const at::Tensor& w, int64_t bits, const char* op) {
  TORCH_CHECK(w.dim() == 2, op, ": w must be a 2-D weight [out_features, in_features], got a ", w.dim(),
              "-D tensor of shape ", w.sizes());
  dtype_code(w, op);
  TORCH_CHECK(bits >= 2 && bits <= 8, op, ": bits must be in 2..8, got ", bits);
}

inline kernels::FakeQuantParams make_params(int64_t bits, int64_t group_size, bool symmetric,
                                            bool clip_search) {
  kernels::FakeQuantParams p;
  p.bits = static_cast<int>(bits);
  p.group_size = group_size;
  p.symmetric = symmetric;
  p.clip_search = clip_search;
  return p;
}

inline void check_status(kernels::Status s, const char* op) {
  TORCH_CHECK(s == kernels::Status::kOk, op, ": ", kernels::status_message(s));
}

}  // namespace empas::ops
