// Shared by the CPU/Meta and CUDA adapters of empas::packed_linear: argument
// checks and the output shape.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "pack_common.hpp"

namespace empas::ops {

constexpr const char* kPackedLinearOp = "empas::packed_linear";

/// Checks what every implementation (Meta included) must reject: the packed
/// weight as dequant does, x ([..., in], float32/float16/bfloat16) and bias
/// ([out], floating). Errors name op (the op being called).
inline void check_packed_linear_args(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                                     const std::optional<at::Tensor>& zeros,
                                     const std::optional<at::Tensor>& bias, int64_t bits,
                                     int64_t out_features, int64_t in_features, int64_t group_size,
                                     const char* op = kPackedLinearOp) {
  check_dequant_args(qweight, scales, zeros, bits, out_features, in_features, group_size, at::kFloat, op);
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(x.dim() >= 1 && concrete(x.sym_size(-1)) == in_features, op, ": x must have shape [..., ",
              in_features, "] (in_features), got ", x.sym_sizes());
  TORCH_CHECK(x.device() == qweight.device(), op, ": x is on ", x.device(), " but qweight is on ",
              qweight.device());
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && concrete(b.sym_size(0)) == out_features, op, ": bias must have shape [",
                out_features, "] (out_features), got ", b.sym_sizes());
    TORCH_CHECK(at::isFloatingType(b.scalar_type()), op, ": bias must be floating point, got ",
                b.scalar_type());
    TORCH_CHECK(b.device() == qweight.device(), op, ": bias is on ", b.device(), " but qweight is on ",
                qweight.device());
  }
}

/// x's sizes with the last one replaced by out_features.
inline std::vector<c10::SymInt> packed_linear_out_shape(const at::Tensor& x, int64_t out_features) {
  std::vector<c10::SymInt> shape(x.sym_sizes().begin(), x.sym_sizes().end());
  shape.back() = c10::SymInt(out_features);
  return shape;
}

inline bool has_bias(const std::optional<at::Tensor>& bias) { return bias.has_value() && bias->defined(); }

}  // namespace empas::ops
