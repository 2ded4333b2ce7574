// Internal to cpp/kernels: runs an fp32 kernel on x and y of any of the three
// dtypes (x widened to fp32 once, y computed in fp32 and rounded to y_dtype
// once, to nearest even). Shared by the fused matmul kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "group_quant.hpp"

namespace empas::kernels::detail {

/// fn(const float* x, float* y) -> Status on fp32 views of x [m x in] and y [m x out].
template <class Fn>
Status with_f32_io(const void* x, DType x_dtype, int64_t m, int64_t in, void* y, DType y_dtype, int64_t out,
                   Fn&& fn) {
  const auto valid = [](DType t) {
    return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
  };
  if (!valid(x_dtype) || !valid(y_dtype)) return Status::kBadDType;
  if (m < 0 || in < 0 || out < 0) return Status::kBadShape;
  std::vector<float> xbuf, ybuf;
  const float* xf = static_cast<const float*>(x);
  if (x_dtype != DType::kFloat32) {
    xbuf.resize(static_cast<size_t>(m * in));
    if (x_dtype == DType::kFloat16) {
      const Half* h = static_cast<const Half*>(x);
      for (size_t i = 0; i < xbuf.size(); ++i) xbuf[i] = to_f(h[i]);
    } else {
      const BFloat16* h = static_cast<const BFloat16*>(x);
      for (size_t i = 0; i < xbuf.size(); ++i) xbuf[i] = to_f(h[i]);
    }
    xf = xbuf.data();
  }
  float* yf = static_cast<float*>(y);
  if (y_dtype != DType::kFloat32) {
    ybuf.resize(static_cast<size_t>(m * out));
    yf = ybuf.data();
  }
  const Status st = fn(xf, yf);
  if (st != Status::kOk || y_dtype == DType::kFloat32) return st;
  if (y_dtype == DType::kFloat16) {
    Half* h = static_cast<Half*>(y);
    for (size_t i = 0; i < ybuf.size(); ++i) h[i] = from_f<Half>(ybuf[i]);
  } else {
    BFloat16* h = static_cast<BFloat16*>(y);
    for (size_t i = 0; i < ybuf.size(); ++i) h[i] = from_f<BFloat16>(ybuf[i]);
  }
  return Status::kOk;
}

}  // namespace empas::kernels::detail
