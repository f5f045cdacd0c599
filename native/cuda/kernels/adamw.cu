// adamw: one step of torch.optim.AdamW over several parameters in one launch (a
// multi-tensor update), in place, f32, as native/cpu/kernels/adamw.cc:
//
//   g = grad · grad_scale
//   p = p · (1 − lr·wd)
//   m = m + (1 − β1)·(g − m)
//   v = β2·v + (1 − β2)·g·g
//   p = p − (lr / bc1) · m / (√v / √bc2 + eps)
//
// Scalars are computed in double and applied in float. p, m, v are written (=); grad
// is only read. The operands' pointers and prefix offsets travel to the device as one
// small table (copied on the stream, so it is ordered after the previous step's use).
//
// ints: [count, n_0, ..., n_{count-1}]
// floats: [lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale]
// ptrs: [p_0, grad_0, m_0, v_0, p_1, grad_1, ...], each contiguous f32 of n_i elements
#include <cmath>

#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

struct Scalars {
  float decay, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, neg_step, scale;
};

struct Entry {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t start;  // prefix offset of this tensor in the concatenation
};

__global__ void adamw_kernel(const Entry* table, int count, int64_t total, Scalars s) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int lo = 0, hi = count - 1;  // the last entry whose start <= e
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (table[mid].start <= e) lo = mid;
      else hi = mid - 1;
    }
    const Entry t = table[lo];
    const int64_t i = e - t.start;
    const float gi = t.g[i] * s.scale;
    const float pi = t.p[i] * s.decay;
    const float mi = t.m[i] + s.one_minus_b1 * (gi - t.m[i]);
    const float vi = t.v[i] * s.b2 + s.one_minus_b2 * gi * gi;
    const float denom = __fsqrt_rn(vi) / s.bc2_sqrt + s.eps;
    t.m[i] = mi;
    t.v[i] = vi;
    t.p[i] = pi + s.neg_step * (mi / denom);
  }
}

void adamw(const KernelArgs& k) {
  const int64_t count = k.ints[0];
  if (count <= 0) return;
  const double lr = k.floats[0], b1 = k.floats[1], b2 = k.floats[2], eps = k.floats[3], wd = k.floats[4];
  const double bc1 = k.floats[5], bc2 = k.floats[6], scale = k.floats[7];
  const Scalars s{static_cast<float>(1.0 - lr * wd), static_cast<float>(1.0 - b1), static_cast<float>(b2),
                  static_cast<float>(1.0 - b2), static_cast<float>(std::sqrt(bc2)), static_cast<float>(eps),
                  static_cast<float>(-lr / bc1), static_cast<float>(scale)};
  std::vector<Entry> host(static_cast<size_t>(count));
  int64_t total = 0;
  for (int64_t t = 0; t < count; ++t) {
    host[t] = {static_cast<float*>(k.ptrs[4 * t]), static_cast<const float*>(k.ptrs[4 * t + 1]),
               static_cast<float*>(k.ptrs[4 * t + 2]), static_cast<float*>(k.ptrs[4 * t + 3]), total};
    total += k.ints[1 + t];
  }
  if (total == 0) return;
  static Entry* table = nullptr;
  static size_t cap = 0;
  if (host.size() > cap) {
    if (table != nullptr) cudaFree(table);  // waits for the device: the old table may be in use
    table = nullptr;
    cap = 0;
    if (cudaMalloc(&table, host.size() * sizeof(Entry)) != cudaSuccess) {
      cudaGetLastError();
      k.error = "out of GPU memory for the parameter table";
      return;
    }
    cap = host.size();
  }
  cudaMemcpyAsync(table, host.data(), host.size() * sizeof(Entry), cudaMemcpyHostToDevice, stream());
  adamw_kernel<<<grid_for(total, 256), 256, 0, stream()>>>(table, static_cast<int>(count), total, s);
}

}  // namespace

FINLORA_KERNEL("adamw", adamw)

}  // namespace cuda
}  // namespace finlora
