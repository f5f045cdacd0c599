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
//
// At a 32k vocabulary the work is one exp per logit in each direction, so the AVX-512
// and AVX2 paths use simd_math.h's exp at their full width (16 and 8 lanes); the scalar
// path computes in f64 with libm.
#include "simd_math.h"  // first: it sets warning state around <immintrin.h>

#include <cmath>
#include <cstring>
#include <string>

#include "kernel.h"

namespace finlora {
namespace {

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

// ---------------------------------------------------------------- scalar (f64)

void forward_scalar(const Params& p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.logits + r * p.V;
    float mx = -INFINITY;
    for (int64_t i = 0; i < p.V; ++i) mx = (x[i] > mx || x[i] != x[i]) ? x[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < p.V; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
    const double lse = mx + std::log(sum);
    p.lse[r] = static_cast<float>(lse);
    const int32_t t = p.targets[r];
    p.loss[r] = t == p.ignore ? 0.f : static_cast<float>(lse - x[t]);
  }
}

void backward_scalar(const Params& p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.logits + r * p.V;
    float* dx = p.dlogits + r * p.V;
    const int32_t t = p.targets[r];
    if (t == p.ignore) {
      std::memset(dx, 0, sizeof(float) * p.V);
      continue;
    }
    const float d = p.dloss[r], lse = p.lse_in[r];
    for (int64_t i = 0; i < p.V; ++i) dx[i] = d * static_cast<float>(std::exp(static_cast<double>(x[i]) - lse));
    dx[t] -= d;
  }
}

// ---------------------------------------------------------------- vector

#if defined(__x86_64__)

// NOTE: the row maximum may skip a NaN (x86 max drops one of its operands when either
// is NaN); the NaN then reaches exp(x - max) and makes the sum, lse and loss NaN, as
// the contract asks.
template <class V>
inline void forward_rows_v(const Params& p, int64_t r0, int64_t r1) {
  using F = typename V::F;
  using D = typename V::D;
  constexpr int W = V::W;
  const int64_t n = p.V, nv = n / W * W;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.logits + r * n;
    F vmax = V::set1(-INFINITY);
    for (int64_t i = 0; i < nv; i += W) vmax = V::max(V::load(x + i), vmax);
    float mx = V::hmax(vmax);
    for (int64_t i = nv; i < n; ++i) mx = (x[i] > mx || x[i] != x[i]) ? x[i] : mx;
    // The row was just read, so it is in cache: the second pass costs exps, not memory.
    const F vm = V::set1(mx);
    D s0 = V::dzero(), s1 = V::dzero();
    for (int64_t i = 0; i < nv; i += W) {
      const F e = simd::exp<V>(V::sub(V::load(x + i), vm));
      s0 = V::dadd(s0, V::widen_lo(e));
      s1 = V::dadd(s1, V::widen_hi(e));
    }
    double sum = V::dsum(V::dadd(s0, s1));
    for (int64_t i = nv; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
    const double lse = mx + std::log(sum);
    p.lse[r] = static_cast<float>(lse);
    const int32_t t = p.targets[r];
    p.loss[r] = t == p.ignore ? 0.f : static_cast<float>(lse - x[t]);
  }
}

template <class V>
inline void backward_rows_v(const Params& p, int64_t r0, int64_t r1) {
  using F = typename V::F;
  constexpr int W = V::W;
  const int64_t n = p.V, nv = n / W * W;
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.logits + r * n;
    float* dx = p.dlogits + r * n;
    const int32_t t = p.targets[r];
    if (t == p.ignore) {
      std::memset(dx, 0, sizeof(float) * n);
      continue;
    }
    const float d = p.dloss[r], lse = p.lse_in[r];
    const F vd = V::set1(d), vl = V::set1(lse);
    for (int64_t i = 0; i < nv; i += W) V::store(dx + i, V::mul(vd, simd::exp<V>(V::sub(V::load(x + i), vl))));
    for (int64_t i = nv; i < n; ++i) dx[i] = d * std::exp(x[i] - lse);
    dx[t] -= d;
  }
}

FINLORA_AVX512_FN void forward_avx512(const Params& p, int64_t r0, int64_t r1) { forward_rows_v<simd::Avx512>(p, r0, r1); }
FINLORA_AVX2_FN void forward_avx2(const Params& p, int64_t r0, int64_t r1) { forward_rows_v<simd::Avx2>(p, r0, r1); }
FINLORA_AVX512_FN void backward_avx512(const Params& p, int64_t r0, int64_t r1) { backward_rows_v<simd::Avx512>(p, r0, r1); }
FINLORA_AVX2_FN void backward_avx2(const Params& p, int64_t r0, int64_t r1) { backward_rows_v<simd::Avx2>(p, r0, r1); }

#endif

using RowsFn = void (*)(const Params&, int64_t, int64_t);

RowsFn forward_pick() {
#if defined(__x86_64__)
  if (isa() == Isa::Avx512) return forward_avx512;
  if (isa() == Isa::Avx2) return forward_avx2;
#endif
  return forward_scalar;
}

RowsFn backward_pick() {
#if defined(__x86_64__)
  if (isa() == Isa::Avx512) return backward_avx512;
  if (isa() == Isa::Avx2) return backward_avx2;
#endif
  return backward_scalar;
}

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
