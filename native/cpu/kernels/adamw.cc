// adamw: one step of torch.optim.AdamW over several parameters at once (a fused,
// multi-tensor update, as PyTorch's fused/foreach AdamW), in place, f32:
//
//   g = grad · grad_scale                     (gradient clipping's coefficient)
//   p = p · (1 − lr·wd)                       decoupled weight decay
//   m = m + (1 − β1)·(g − m)                  torch's exp_avg.lerp_(g, 1 − β1)
//   v = β2·v + (1 − β2)·g·g
//   p = p − (lr / bc1) · m / (√v / √bc2 + eps)
//
// Scalars are computed in double and applied in float, as torch applies Python
// scalars to f32 tensors. p, m, v are written (=); grad is only read.
//
// ints: [count, n_0, ..., n_{count-1}]
// floats: [lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale]
// ptrs: [p_0, grad_0, m_0, v_0, p_1, grad_1, ...], each contiguous f32 of n_i elements
#include <cmath>

#include "kernel.h"

namespace finlora {
namespace {

struct Scalars {
  float decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, neg_step, scale;
};

FINLORA_CLONES void update(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v, int64_t n, Scalars s) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * s.scale;
    const float pi = p[i] * s.decay;
    const float mi = m[i] + s.one_minus_b1 * (gi - m[i]);
    const float vi = v[i] * s.b2 + s.one_minus_b2 * gi * gi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + s.neg_step * (mi / denom);
  }
}

void adamw_kernel(const KernelArgs& k) {
  const int64_t count = k.ints[0];
  const double lr = k.floats[0], b1 = k.floats[1], b2 = k.floats[2], eps = k.floats[3], wd = k.floats[4];
  const double bc1 = k.floats[5], bc2 = k.floats[6], scale = k.floats[7];
  const Scalars s{static_cast<float>(1.0 - lr * wd), static_cast<float>(1.0 - b1), static_cast<float>(b2), static_cast<float>(1.0 - b2),
                  static_cast<float>(std::sqrt(bc2)), static_cast<float>(eps), static_cast<float>(-lr / bc1), static_cast<float>(scale)};
  // Split the concatenation of all parameters into even chunks, so small tensors do not
  // each pay a parallel dispatch and large ones still use every thread.
  int64_t total = 0;
  for (int64_t t = 0; t < count; ++t) total += k.ints[1 + t];
  parallel_for(total, 1 << 14, [&](int64_t b, int64_t e) {
    int64_t start = 0;
    for (int64_t t = 0; t < count && start < e; ++t) {
      const int64_t n = k.ints[1 + t];
      const int64_t lo = b > start ? b - start : 0;
      const int64_t hi = e - start < n ? e - start : n;
      if (lo < hi) {
        float* p = static_cast<float*>(k.ptrs[4 * t]);
        const float* g = static_cast<const float*>(k.ptrs[4 * t + 1]);
        float* m = static_cast<float*>(k.ptrs[4 * t + 2]);
        float* v = static_cast<float*>(k.ptrs[4 * t + 3]);
        update(p + lo, g + lo, m + lo, v + lo, hi - lo, s);
      }
      start += n;
    }
  });
}

}  // namespace

FINLORA_KERNEL("adamw", adamw_kernel)

}  // namespace finlora
