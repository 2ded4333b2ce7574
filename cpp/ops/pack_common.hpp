// Shared by the CPU/Meta and CUDA adapters of the packing ops
// (empas::quantize_pack, empas::dequant): argument checks and output shapes.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "empas/kernels/pack.hpp"
#include "fake_quant_common.hpp"

namespace empas::ops {

constexpr const char* kPackOp = "empas::quantize_pack";
constexpr const char* kDequantOp = "empas::dequant";

using PackResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

/// The (empty) outputs of quantize_pack for w: qweight [ceil(rows * cols *
/// bits / 8)] uint8, scales [rows, ngroups] fp16, zeros [rows, ngroups] uint8
/// (asymmetric) or [0] (symmetric), on options' device.
inline PackResult empty_pack_outputs(int64_t rows, int64_t cols, int64_t bits, int64_t group_size,
                                     bool symmetric, const at::TensorOptions& options) {
  const int64_t ng = kernels::num_groups(cols, group_size);
  const auto u8 = options.dtype(at::kByte);
  return {at::empty({kernels::packed_bytes(rows, cols, static_cast<int>(bits))}, u8),
          at::empty({rows, ng}, options.dtype(at::kHalf)),
          symmetric ? at::empty({0}, u8) : at::empty({rows, ng}, u8)};
}

/// The outputs of quantize_pack for a w with symbolic sizes (Meta under
/// torch.compile / opcheck): the same shapes as SymInt expressions.
inline PackResult empty_pack_outputs_symint(const c10::SymInt& rows, const c10::SymInt& cols, int64_t bits,
                                            int64_t group_size, bool symmetric,
                                            const at::TensorOptions& options) {
  // ngroups = ceil(cols / g) when g > 0 (1 when 0 < cols <= g, 0 when cols == 0),
  // else min(cols, 1): num_groups() without branching on cols.
  const c10::SymInt ng = group_size > 0 ? (cols + (group_size - 1)) / group_size : cols.min(c10::SymInt(1));
  const auto u8 = options.dtype(at::kByte);
  return {at::empty_symint({(rows * cols * bits + 7) / 8}, u8),
          at::empty_symint({rows, ng}, options.dtype(at::kHalf)),
          symmetric ? at::empty_symint({c10::SymInt(0)}, u8) : at::empty_symint({rows, ng}, u8)};
}

/// A size as an int; a symbolic one (Meta under torch.compile) is specialized.
inline int64_t concrete(const c10::SymInt& v) { return v.guard_int(__FILE__, __LINE__); }

/// The kernels' dtype code of an output ScalarType (TORCH_CHECK-fails for others).
inline kernels::DType out_dtype_code(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat:
      return kernels::DType::kFloat32;
    case at::kHalf:
      return kernels::DType::kFloat16;
    case at::kBFloat16:
      return kernels::DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": dtype must be float32, float16 or bfloat16, got ", t);
  }
}

/// Whether zeros makes the weight asymmetric (defined and not empty).
inline bool has_zeros(const std::optional<at::Tensor>& zeros) {
  return zeros.has_value() && zeros->defined() && concrete(zeros->sym_numel()) > 0;
}

/// Checks what every implementation of dequant (Meta included) must reject.
inline void check_dequant_args(const at::Tensor& qweight, const at::Tensor& scales,
                               const std::optional<at::Tensor>& zeros, int64_t bits, int64_t rows,
                               int64_t cols, int64_t group_size, at::ScalarType dtype,
                               const char* op = kDequantOp) {
  TORCH_CHECK(bits >= 2 && bits <= 8, op, ": bits must be in 2..8, got ", bits);
  TORCH_CHECK(rows >= 0 && cols >= 0, op, ": rows and cols must be >= 0, got ", rows, "x", cols);
  TORCH_CHECK(cols == 0 || rows <= std::numeric_limits<int64_t>::max() / 8 / cols, op, ": ", rows, "x", cols,
              " is too large");
  out_dtype_code(dtype, op);
  TORCH_CHECK(qweight.scalar_type() == at::kByte, op, ": qweight must be uint8, got ", qweight.scalar_type());
  TORCH_CHECK(qweight.dim() == 1, op, ": qweight must be 1-D, got shape ", qweight.sym_sizes());
  const int64_t expect = kernels::packed_bytes(rows, cols, static_cast<int>(bits));
  const int64_t have = concrete(qweight.sym_numel());
  TORCH_CHECK(have == expect, op, ": qweight has ", have, " bytes, expected ", expect, " for ", rows, "x",
              cols, " at ", bits, " bits");
  const int64_t ng = kernels::num_groups(cols, group_size);
  TORCH_CHECK(scales.scalar_type() == at::kHalf, op, ": scales must be float16, got ", scales.scalar_type());
  TORCH_CHECK(scales.dim() == 2 && concrete(scales.sym_size(0)) == rows && concrete(scales.sym_size(1)) == ng,
              op, ": scales must have shape [rows, ngroups] = [", rows, ", ", ng, "] (group_size ",
              group_size, "), got ", scales.sym_sizes());
  TORCH_CHECK(scales.device() == qweight.device(), op, ": scales is on ", scales.device(),
              " but qweight is on ", qweight.device());
  if (has_zeros(zeros)) {
    const at::Tensor& z = *zeros;
    TORCH_CHECK(z.scalar_type() == at::kByte, op, ": zeros must be uint8, got ", z.scalar_type());
    TORCH_CHECK(z.dim() == 2 && concrete(z.sym_size(0)) == rows && concrete(z.sym_size(1)) == ng, op,
                ": zeros must have shape [rows, ngroups] = [", rows, ", ", ng,
                "] (or be None / empty for a symmetric weight), got ", z.sym_sizes());
    TORCH_CHECK(z.device() == qweight.device(), op, ": zeros is on ", z.device(), " but qweight is on ",
                qweight.device());
  }
}

}  // namespace empas::ops
