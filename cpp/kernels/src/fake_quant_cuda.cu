// CUDA fake-quant kernels (no torch headers). Same semantics as
// fake_quant_cpu.cpp, bit for bit: IEEE division and multiplication without
// contraction (__fdiv_rn/__fmul_rn, and the library builds with --fmad=false),
// rint (round half to even), fp16 scales through __float2half_rn.
//
// One team per group: a warp when the group has <= 1024 elements (8 groups per
// 256-thread block), else a 256-thread block. Lane i of a team reads elements
// i, i + team, ... of the group (coalesced), reductions use warp shuffles (and
// shared memory across the warps of a block). The group is read twice (reduce,
// then write; the second read hits L1/L2) and, with the clip search, once more
// per ratio.
//
// NOTE: in this project's CI this file is compiled (nvcc, and the CUDA build
// with -DEMPAS_CUDA=ON) but not run: the development machine has no GPU. The
// GPU tests in tests_py/test_ops.py (marked gpu) compare it with the CPU op.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "empas/kernels/fake_quant.hpp"

namespace empas::kernels {
namespace {

constexpr int kBlock = 256;              // threads per block
constexpr int64_t kWarpMaxGroup = 1024;  // groups up to this size get a warp each

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void st(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ __forceinline__ int32_t key_of(float x) {
  const uint32_t b = __float_as_uint(x);
  return static_cast<int32_t>(b ^ ((0u - (b >> 31)) >> 1));
}
__device__ __forceinline__ float float_of_key(int32_t k) {
  const uint32_t u = static_cast<uint32_t>(k);
  return __uint_as_float(u ^ ((0u - (u >> 31)) >> 1));
}
__device__ __forceinline__ float round_to_fp16_dev(float f) { return __half2float(__float2half_rn(f)); }

/// Reduces v over the team (all lanes get the result). scratch: shared memory
/// with kBlock / 32 entries, only used by block teams.
template <int TEAM, class V, class Op>
__device__ __forceinline__ V team_reduce(V v, Op op, V* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if constexpr (TEAM == 32) {
    return v;
  } else {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    __syncthreads();  // the previous use of scratch is over
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    v = scratch[0];
#pragma unroll
    for (int w = 1; w < TEAM / 32; ++w) v = op(v, scratch[w]);
    return v;
  }
}

struct Minimum {
  template <class V>
  __device__ V operator()(V a, V b) const {
    return b < a ? b : a;
  }
};
struct Maximum {
  template <class V>
  __device__ V operator()(V a, V b) const {
    return b > a ? b : a;
  }
};
struct Sum {
  __device__ double operator()(double a, double b) const { return __dadd_rn(a, b); }
};

enum Mode : int { kQuant = 0, kZeros = 1, kCopy = 2 };
struct GroupQ {
  int mode;
  float scale, qlo, qhi;
};

/// Mirrors make_q() of the CPU kernels. Returns false on fp16 scale overflow.
__device__ bool make_q(int bits, bool symmetric, float m, float lo, float hi, float r, GroupQ* g) {
  if (symmetric) {
    const float half = static_cast<float>(1 << (bits - 1));
    const float d = round_to_fp16_dev(__fdiv_rn(__fmul_rn(m, r), -half));
    if (isinf(d)) return false;
    if (d == 0.0f) {
      *g = GroupQ{kZeros, 0.0f, 0.0f, 0.0f};
      return true;
    }
    *g = GroupQ{kQuant, d, -half, half - 1.0f};
    return true;
  }
  const float qmax = static_cast<float>((1 << bits) - 1);
  const float lor = __fmul_rn(lo, r), hir = __fmul_rn(hi, r);
  const float s = round_to_fp16_dev(__fdiv_rn(__fsub_rn(hir, lor), qmax));
  if (isinf(s) || isnan(s)) return false;
  if (s == 0.0f) {
    *g = GroupQ{kCopy, 0.0f, 0.0f, 0.0f};
    return true;
  }
  const float z = fminf(fmaxf(rintf(__fdiv_rn(-lor, s)), 0.0f), qmax);
  *g = GroupQ{kQuant, s, -z, qmax - z};
  return true;
}

__device__ __forceinline__ float deq(float w, const GroupQ& q) {
  const float t = fminf(fmaxf(__fdiv_rn(w, q.scale), q.qlo), q.qhi);
  return __fadd_rn(__fmul_rn(rintf(t), q.scale), 0.0f);  // + 0: a zero is +0.0
}

template <int TEAM, class T>
__device__ double team_error(const T* x, int64_t n, const GroupQ& q, int lane, double* scratch) {
  double acc = 0.0;
  if (q.mode != kCopy) {
    for (int64_t i = lane; i < n; i += TEAM) {
      const float w = ld(x, i);
      const float e = q.mode == kZeros ? w : __fsub_rn(deq(w, q), w);
      acc = __dadd_rn(acc, __dmul_rn(static_cast<double>(e), static_cast<double>(e)));
    }
  }
  return team_reduce<TEAM>(acc, Sum{}, scratch);
}

template <int TEAM, class T>
__global__ void __launch_bounds__(kBlock)
    fake_quant_kernel(const T* __restrict__ in, T* out, int64_t cols, int64_t gs, int64_t groups,
                      int64_t total, int bits, bool symmetric, bool clip, int* status) {
  __shared__ int32_t s_int[kBlock / 32];
  __shared__ long long s_ll[kBlock / 32];
  __shared__ double s_dbl[kBlock / 32];
  constexpr int kTeamsPerBlock = kBlock / TEAM;
  const int lane = threadIdx.x % TEAM;
  const int64_t team0 = static_cast<int64_t>(blockIdx.x) * kTeamsPerBlock + threadIdx.x / TEAM;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTeamsPerBlock;
  // A block team's threads share g, so they agree on every branch below (the
  // reductions give all lanes the same values) and reach the same barriers.
  for (int64_t g = team0; g < total; g += stride) {
    const int64_t row = g / groups, j = g % groups;
    const int64_t off = row * cols + j * gs;
    const int64_t n = min(gs, cols - j * gs);
    const T* x = in + off;
    T* y = out + off;

    int32_t kmin = INT32_MAX, kmax = INT32_MIN;
    for (int64_t i = lane; i < n; i += TEAM) {
      const int32_t k = key_of(ld(x, i));
      kmin = min(kmin, k);
      kmax = max(kmax, k);
    }
    kmin = team_reduce<TEAM>(kmin, Minimum{}, s_int);
    kmax = team_reduce<TEAM>(kmax, Maximum{}, s_int);
    if (kmax >= static_cast<int32_t>(0x7f800000u) || kmin <= static_cast<int32_t>(0x807fffffu)) {
      if (lane == 0 && status != nullptr) atomicCAS(status, 0, static_cast<int>(Status::kNonFinite));
      continue;
    }
    const float lo = float_of_key(kmin), hi = float_of_key(kmax);
    float m = 0.0f;
    if (symmetric) {
      const float alo = fabsf(lo), ahi = fabsf(hi);
      if (alo != ahi || lo == hi) {
        m = alo > ahi ? lo : hi;
      } else {  // both -a and +a occur: the first one wins
        long long first = LLONG_MAX;
        for (int64_t i = lane; i < n; i += TEAM)
          if (fabsf(ld(x, i)) == ahi) {
            first = i;
            break;
          }
        first = team_reduce<TEAM>(first, Minimum{}, s_ll);
        m = ld(x, first);
      }
    }
    GroupQ q;
    bool ok = make_q(bits, symmetric, m, lo, hi, 1.0f, &q);
    if (ok && clip) {
      double best = team_error<TEAM>(x, n, q, lane, s_dbl);
      for (int k = 1; k < kClipRatios; ++k) {
        GroupQ c;
        if (!make_q(bits, symmetric, m, lo, hi, static_cast<float>(1.0 - k / 20.0), &c)) {
          ok = false;
          break;
        }
        const double e = team_error<TEAM>(x, n, c, lane, s_dbl);
        if (e < best) {  // strict: the largest ratio wins ties
          best = e;
          q = c;
        }
      }
    }
    if (!ok) {
      if (lane == 0 && status != nullptr) atomicCAS(status, 0, static_cast<int>(Status::kScaleOverflow));
      continue;
    }
    if (q.mode == kCopy) {
      if (static_cast<const void*>(x) != static_cast<const void*>(y))
        for (int64_t i = lane; i < n; i += TEAM) y[i] = x[i];
    } else if (q.mode == kZeros) {
      for (int64_t i = lane; i < n; i += TEAM) st(y, i, 0.0f);
    } else {
      for (int64_t i = lane; i < n; i += TEAM) st(y, i, deq(ld(x, i), q));
    }
  }
}

template <class T>
Status launch(const void* in, void* out, int64_t rows, int64_t cols, const FakeQuantParams& p,
              cudaStream_t stream, int* status) {
  const int64_t gs = effective_group_size(p.group_size, cols);
  const int64_t groups = (cols + gs - 1) / gs;
  const int64_t total = rows * groups;
  const auto* x = static_cast<const T*>(in);
  auto* y = static_cast<T*>(out);
  constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this
  if (gs <= kWarpMaxGroup) {
    const int64_t blocks = std::min<int64_t>((total + kBlock / 32 - 1) / (kBlock / 32), kMaxBlocks);
    fake_quant_kernel<32, T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
        x, y, cols, gs, groups, total, p.bits, p.symmetric, p.clip_search, status);
  } else {
    const int64_t blocks = std::min<int64_t>(total, kMaxBlocks);
    fake_quant_kernel<kBlock, T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
        x, y, cols, gs, groups, total, p.bits, p.symmetric, p.clip_search, status);
  }
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kCudaError;
}

}  // namespace

Status fake_quant_cuda(const void* in, void* out, int dtype, int64_t rows, int64_t cols,
                       const FakeQuantParams& p, void* stream, int* status_dev) {
  if (p.bits < 2 || p.bits > 8) return Status::kBadBits;
  if (rows < 0 || cols < 0) return Status::kBadShape;
  if (rows == 0 || cols == 0) return Status::kOk;
  auto s = static_cast<cudaStream_t>(stream);
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32:
      return launch<float>(in, out, rows, cols, p, s, status_dev);
    case DType::kFloat16:
      return launch<__half>(in, out, rows, cols, p, s, status_dev);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(in, out, rows, cols, p, s, status_dev);
  }
  return Status::kBadDType;
}

}  // namespace empas::kernels
