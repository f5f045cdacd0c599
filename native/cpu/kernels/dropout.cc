// dropoutMask: the scale mask of inverted dropout from the counter-based uniform of
// src/ops/dropout.ts, implemented here bit for bit: out[i] = u(seed, offset + i) >= p
// ? 1/(1-p) : 0. Each element depends only on (seed, offset + i), so the mask is the
// same on every backend and for every thread count.
//
// ints: [n, seed (uint32), offset (0 <= offset + n <= 2^53)]; floats: [p]; ptrs: [out f32 [n]]
#include <cstdint>

#include "kernel.h"

namespace finlora {
namespace {

// Wellons' "lowbias32" finaliser, as mix32 in src/ops/dropout.ts.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The keys depend only on the counter's high word, which is constant over runs of
// 2^32 counters; they are computed once per run.
struct Keys {
  uint32_t k1, k2;
};
inline Keys keys_for(uint32_t seed, uint32_t hi) {
  const uint32_t k1 = mix32(mix32(seed ^ 0x9e3779b9u) + hi);
  return {k1, mix32(k1 ^ 0x85ebca6bu)};
}
inline uint32_t bits24(const Keys& k, uint32_t lo) { return mix32(mix32(lo + k.k1) ^ k.k2) >> 8; }

void dropout_mask_kernel(const KernelArgs& a) {
  const int64_t n = a.ints[0];
  const uint32_t seed = static_cast<uint32_t>(a.ints[1]);
  const uint64_t offset = static_cast<uint64_t>(a.ints[2]);
  const double p = a.floats[0];
  const float keep = static_cast<float>(1.0 / (1.0 - p));
  // u = bits / 2^24 >= p  <=>  bits >= ceil(p * 2^24), exactly (p * 2^24 is exact in f64)
  const double scaled = p * 16777216.0;
  const uint32_t threshold = static_cast<uint32_t>(scaled) + (static_cast<double>(static_cast<uint32_t>(scaled)) < scaled ? 1u : 0u);
  float* out = static_cast<float*>(a.ptrs[0]);
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    int64_t i = b;
    while (i < e) {
      const uint64_t c = offset + static_cast<uint64_t>(i);
      const uint32_t hi = static_cast<uint32_t>(c >> 32);
      const Keys k = keys_for(seed, hi);
      // elements up to the next multiple of 2^32 share hi
      const uint64_t run_end = (static_cast<uint64_t>(hi) + 1) << 32;
      const int64_t stop = static_cast<int64_t>(run_end - offset) < e ? static_cast<int64_t>(run_end - offset) : e;
      for (; i < stop; ++i) {
        const uint32_t lo = static_cast<uint32_t>(offset + static_cast<uint64_t>(i));
        out[i] = bits24(k, lo) >= threshold ? keep : 0.0f;
      }
    }
  });
}

}  // namespace

FINLORA_KERNEL("dropoutMask", dropout_mask_kernel)

}  // namespace finlora
