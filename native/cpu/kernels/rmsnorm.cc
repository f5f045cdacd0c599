// rmsnorm: Llama's RMSNorm over the last axis (Zhang & Sennrich 2019; Hugging Face
// LlamaRMSNorm): y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps). The mean of
// squares accumulates in f64, rstd is rounded to f32, and y = (x * rstd) * w in f32, the
// order Hugging Face uses.
//
// rmsnorm ints: [N, D, dtype W, dtype T]; floats: [eps]; ptrs: [x [N, D], weight [D], out [N, D], rstd [N]] (=)
// rmsnormBackward ints: [N, D, dtype W, dtype T]; ptrs: [x, weight, rstd, dy, dx [N, D] (=), dweight [D] (=)]
// rmsnormBackwardDx ints: [N, D, dtype W, accumulate, dtype T]; ptrs: [x, weight, rstd, dy, dx [N, D] (= or +=)]
//   dx alone (a frozen weight needs no dweight); with accumulate each row's dx is
//   computed as above and then added to what dx holds, as binary add would add it
// The weight W is f32 or bf16 (a frozen bf16 model's, widened here once per call).
//   dx = rstd * w * dy - x * rstd^3 / D * sum_k(dy_k * w_k * x_k)
//   dweight = sum over rows of dy * x * rstd
#include <cmath>
#include <vector>

#include "nn_simd.h"

namespace finlora {
namespace {

using namespace nn;

struct Params {
  const float* x;
  const float* w;
  const float* rstd_in;
  const float* dy;
  float* out;
  float* rstd;
  float* dx;
  double* dw;  // f64 column sums for the backward
  int64_t N, D;
  double eps;
};

FINLORA_INLINE void forward_rows(const Params& p, int64_t r0, int64_t r1) {
  const int64_t D = p.D;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.x + r * D;
    float* y = p.out + r * D;
    const float rs = static_cast<float>(1.0 / std::sqrt(sumsq_f64(x, D) / static_cast<double>(D) + p.eps));
    p.rstd[r] = rs;
    const v8f vr = splat8(rs);
    int64_t i = 0;
    for (; i + 8 <= D; i += 8) store8(y + i, (load8(x + i) * vr) * load8(p.w + i));
    for (; i < D; ++i) y[i] = (x[i] * rs) * p.w[i];
  }
}
FINLORA_ISA_VARIANTS(forward, forward_rows, Params)

FINLORA_INLINE void dx_rows(const Params& p, int64_t r0, int64_t r1) {
  const int64_t D = p.D;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.x + r * D;
    const float* dy = p.dy + r * D;
    float* dx = p.dx + r * D;
    const double rs = p.rstd_in[r];
    const float a = static_cast<float>(rs);
    const float b = static_cast<float>(rs * rs * rs * dot3_f64(dy, p.w, x, D) / static_cast<double>(D));
    const v8f va = splat8(a), vb = splat8(b);
    int64_t i = 0;
    for (; i + 8 <= D; i += 8) store8(dx + i, va * load8(p.w + i) * load8(dy + i) - vb * load8(x + i));
    for (; i < D; ++i) dx[i] = a * p.w[i] * dy[i] - b * x[i];
  }
}
FINLORA_ISA_VARIANTS(dx, dx_rows, Params)

// Column blocks [c0, c1) of dweight, summed over every row in f64; each thread owns
// its columns, so the sum needs no reduction across threads and is the same for any
// thread count.
constexpr int64_t kCols = 64;
FINLORA_INLINE void dw_blocks(const Params& p, int64_t b0, int64_t b1) {
  const int64_t D = p.D;
  const int64_t c0 = b0 * kCols, c1 = b1 * kCols < D ? b1 * kCols : D;
  double* acc = p.dw;
  for (int64_t r = 0; r < p.N; ++r) {
    const float* x = p.x + r * D;
    const float* dy = p.dy + r * D;
    const double rs = p.rstd_in[r];
    for (int64_t c = c0; c < c1; ++c) acc[c] += static_cast<double>(dy[c]) * x[c] * rs;
  }
}
FINLORA_ISA_VARIANTS(dw, dw_blocks, Params)

// The weight as f32: itself, or a bf16 weight widened into `wide` (exact).
const float* weight_f32(const KernelArgs& a, int64_t D, std::vector<float>& wide) {
  if (a.ints.size() < 4 || a.ints[2] != BF16) return static_cast<const float*>(a.ptrs[1]);
  const uint16_t* w = static_cast<const uint16_t*>(a.ptrs[1]);
  wide.resize(static_cast<size_t>(D));
  for (int64_t i = 0; i < D; ++i) wide[i] = bf16_to_f32(w[i]);
  return wide.data();
}

void rmsnorm_kernel(const KernelArgs& a) {
  Params p{};
  p.N = a.ints[0];
  p.D = a.ints[1];
  p.eps = a.floats[0];
  p.x = static_cast<const float*>(a.ptrs[0]);
  std::vector<float> wide;
  p.w = weight_f32(a, p.D, wide);
  p.out = static_cast<float*>(a.ptrs[2]);
  p.rstd = static_cast<float*>(a.ptrs[3]);
  const auto fn = forward_pick();
  parallel_for(p.N, 1 + (1 << 14) / (p.D + 1), [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
}

// The operands both backward kernels read: [x, weight, rstd, dy, dx, ...] with ints [N, D, ...];
// `wide` holds a bf16 weight widened to f32.
Params backward_params(const KernelArgs& a, std::vector<float>& wide) {
  Params p{};
  p.N = a.ints[0];
  p.D = a.ints[1];
  p.x = static_cast<const float*>(a.ptrs[0]);
  p.w = weight_f32(a, p.D, wide);
  p.rstd_in = static_cast<const float*>(a.ptrs[2]);
  p.dy = static_cast<const float*>(a.ptrs[3]);
  p.dx = static_cast<float*>(a.ptrs[4]);
  return p;
}

void rmsnorm_backward_kernel(const KernelArgs& a) {
  std::vector<float> wide;
  Params p = backward_params(a, wide);
  float* dweight = static_cast<float*>(a.ptrs[5]);
  const auto fdx = dx_pick();
  parallel_for(p.N, 1 + (1 << 14) / (p.D + 1), [&](int64_t r0, int64_t r1) { fdx(p, r0, r1); });
  std::vector<double> acc(static_cast<size_t>(p.D), 0.0);
  p.dw = acc.data();
  const auto fdw = dw_pick();
  parallel_for((p.D + kCols - 1) / kCols, 1 + (1 << 12) / (p.N + 1), [&](int64_t b0, int64_t b1) { fdw(p, b0, b1); });
  for (int64_t c = 0; c < p.D; ++c) dweight[c] = static_cast<float>(acc[c]);
}

FINLORA_CLONES void add_row(const float* __restrict x, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = out[i] + x[i];
}

void rmsnorm_backward_dx_kernel(const KernelArgs& a) {
  std::vector<float> wide;
  Params p = backward_params(a, wide);
  const bool accumulate = a.ints[3] != 0;
  const auto fdx = dx_pick();
  const int64_t D = p.D;
  if (!accumulate) {
    parallel_for(p.N, 1 + (1 << 14) / (D + 1), [&](int64_t r0, int64_t r1) { fdx(p, r0, r1); });
    return;
  }
  // Each row's dx goes through a buffer and a separate add (no fused multiply-add can
  // merge the two roundings), so the sum is bit for bit the add kernel's.
  parallel_for(p.N, 1 + (1 << 14) / (D + 1), [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(D));
    for (int64_t r = r0; r < r1; ++r) {
      Params q = p;
      q.x = p.x + r * D;
      q.dy = p.dy + r * D;
      q.rstd_in = p.rstd_in + r;
      q.dx = row.data();
      fdx(q, 0, 1);
      add_row(row.data(), p.dx + r * D, D);
    }
  });
}

}  // namespace

FINLORA_KERNEL("rmsnorm", rmsnorm_kernel)
FINLORA_KERNEL("rmsnormBackwardDx", rmsnorm_backward_dx_kernel)
FINLORA_KERNEL("rmsnormBackward", rmsnorm_backward_kernel)

}  // namespace finlora
