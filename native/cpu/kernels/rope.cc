// rope: rotary position embedding (Su et al. 2021) in Hugging Face's rotate_half
// layout, where element i of a head pairs with element i + D/2:
//   out[i]       = x[i] * cos[i] - x[i + D/2] * sin[i]
//   out[i + D/2] = x[i + D/2] * cos[i] + x[i] * sin[i]
// inverse = 1 rotates by the opposite angle (sin negated), which is the backward:
// a rotation's transpose is its inverse.
//
// ints: [B, T, H, D, cos_batch_stride (0 when cos/sin are [1, T, D/2], else T * D/2), inverse]
// ptrs: [x [B, T, H, D], cos, sin ([B or 1, T, D/2]), out [B, T, H, D]] (=)
#include "nn_simd.h"

namespace finlora {
namespace {

using namespace nn;

struct Params {
  const float* x;
  const float* cos;
  const float* sin;
  float* out;
  int64_t T, H, D, cbs;
  float sign;
};

// One (b, t) position per item: its cos/sin rows serve all H heads.
FINLORA_INLINE void rope_positions(const Params& p, int64_t i0, int64_t i1) {
  const int64_t half = p.D / 2;
  const v8f vsign = splat8(p.sign);
  for (int64_t bt = i0; bt < i1; ++bt) {
    const int64_t b = bt / p.T, t = bt % p.T;
    const float* c = p.cos + b * p.cbs + t * half;
    const float* s = p.sin + b * p.cbs + t * half;
    for (int64_t h = 0; h < p.H; ++h) {
      const float* x1 = p.x + (bt * p.H + h) * p.D;
      const float* x2 = x1 + half;
      float* o1 = p.out + (bt * p.H + h) * p.D;
      float* o2 = o1 + half;
      int64_t i = 0;
      for (; i + 8 <= half; i += 8) {
        const v8f vc = load8(c + i), vs = load8(s + i) * vsign, a = load8(x1 + i), b2 = load8(x2 + i);
        store8(o1 + i, a * vc - b2 * vs);
        store8(o2 + i, b2 * vc + a * vs);
      }
      for (; i < half; ++i) {
        const float sn = s[i] * p.sign, a = x1[i], b2 = x2[i];
        o1[i] = a * c[i] - b2 * sn;
        o2[i] = b2 * c[i] + a * sn;
      }
    }
  }
}
FINLORA_ISA_VARIANTS(rope, rope_positions, Params)

void rope_kernel(const KernelArgs& a) {
  Params p{};
  const int64_t B = a.ints[0];
  p.T = a.ints[1];
  p.H = a.ints[2];
  p.D = a.ints[3];
  p.cbs = a.ints[4];
  p.sign = a.ints[5] ? -1.0f : 1.0f;
  p.x = static_cast<const float*>(a.ptrs[0]);
  p.cos = static_cast<const float*>(a.ptrs[1]);
  p.sin = static_cast<const float*>(a.ptrs[2]);
  p.out = static_cast<float*>(a.ptrs[3]);
  const auto fn = rope_pick();
  parallel_for(B * p.T, 1 + (1 << 13) / (p.H * p.D + 1), [&](int64_t i0, int64_t i1) { fn(p, i0, i1); });
}

}  // namespace

FINLORA_KERNEL("rope", rope_kernel)

}  // namespace finlora
