// crossEntropy: per-row softmax cross-entropy over logits [N, V] with integer targets,
// as torch.nn.functional.cross_entropy(reduction='none'): loss = lse - logit[target],
// with lse = log(sum(exp(logits))) accumulated in f64 around the row maximum. Rows
// whose target is ignore_index get loss 0. Nothing of size N x V is allocated: the
// row's lse is saved and backward recomputes the softmax from it.
//
// crossEntropy ints: [N, V, ignore_index]; ptrs: [logits [N, V], targets int32 [N], loss [N] (=), lse [N] (=)]
// crossEntropyBackward ints: the same; ptrs: [logits, targets, lse, dloss [N], dlogits [N, V] (=)]
//   dlogits = dloss * (softmax(logits) - onehot(target)), zero rows where ignored.
// Targets outside [0, V) other than ignore_index are an error, reported before any write.
#include <cmath>
#include <string>

#include "nn_simd.h"

namespace finlora {
namespace {

using namespace nn;

struct Params {
  const float* logits;
  const int32_t* targets;
  const float* lse_in;
  const float* dloss;
  float* loss;
  float* lse;
  float* dlogits;
  int64_t N, V, ignore;
};

FINLORA_INLINE void forward_rows(const Params& p, int64_t r0, int64_t r1) {
  const int64_t V = p.V;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.logits + r * V;
    const float mx = max_of(x, V);
    const v8f vm = splat8(mx);
    v4d s0 = {}, s1 = {};
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) {
      const v8f e = exp8(load8(x + i) - vm);
      s0 += v4d{e[0], e[1], e[2], e[3]};
      s1 += v4d{e[4], e[5], e[6], e[7]};
    }
    const v4d s = s0 + s1;
    double sum = (s[0] + s[2]) + (s[1] + s[3]);
    for (; i < V; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
    const double lse = mx + std::log(sum);
    p.lse[r] = static_cast<float>(lse);
    const int32_t t = p.targets[r];
    p.loss[r] = t == p.ignore ? 0.f : static_cast<float>(lse - x[t]);
  }
}
FINLORA_ISA_VARIANTS(forward, forward_rows, Params)

FINLORA_INLINE void backward_rows(const Params& p, int64_t r0, int64_t r1) {
  const int64_t V = p.V;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.logits + r * V;
    float* dx = p.dlogits + r * V;
    const int32_t t = p.targets[r];
    if (t == p.ignore) {
      std::memset(dx, 0, sizeof(float) * V);
      continue;
    }
    const float d = p.dloss[r], lse = p.lse_in[r];
    const v8f vd = splat8(d), vl = splat8(lse);
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) store8(dx + i, vd * exp8(load8(x + i) - vl));
    for (; i < V; ++i) dx[i] = d * std::exp(x[i] - lse);
    dx[t] -= d;
  }
}
FINLORA_ISA_VARIANTS(backward, backward_rows, Params)

bool check_targets(const KernelArgs& a, const Params& p) {
  for (int64_t r = 0; r < p.N; ++r) {
    const int64_t t = p.targets[r];
    if (t != p.ignore && (t < 0 || t >= p.V)) {
      a.error = "target " + std::to_string(t) + " at row " + std::to_string(r) + " is out of range for " + std::to_string(p.V) +
                " classes (ignore_index " + std::to_string(p.ignore) + ")";
      return false;
    }
  }
  return true;
}

Params read_params(const KernelArgs& a) {
  Params p{};
  p.N = a.ints[0];
  p.V = a.ints[1];
  p.ignore = a.ints[2];
  p.logits = static_cast<const float*>(a.ptrs[0]);
  p.targets = static_cast<const int32_t*>(a.ptrs[1]);
  return p;
}

void cross_entropy_kernel(const KernelArgs& a) {
  Params p = read_params(a);
  if (!check_targets(a, p)) return;
  p.loss = static_cast<float*>(a.ptrs[2]);
  p.lse = static_cast<float*>(a.ptrs[3]);
  const auto fn = forward_pick();
  parallel_for(p.N, 1 + (1 << 14) / (p.V + 1), [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
}

void cross_entropy_backward_kernel(const KernelArgs& a) {
  Params p = read_params(a);
  if (!check_targets(a, p)) return;
  p.lse_in = static_cast<const float*>(a.ptrs[2]);
  p.dloss = static_cast<const float*>(a.ptrs[3]);
  p.dlogits = static_cast<float*>(a.ptrs[4]);
  const auto fn = backward_pick();
  parallel_for(p.N, 1 + (1 << 14) / (p.V + 1), [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
}

}  // namespace

FINLORA_KERNEL("crossEntropy", cross_entropy_kernel)
FINLORA_KERNEL("crossEntropyBackward", cross_entropy_backward_kernel)

}  // namespace finlora
