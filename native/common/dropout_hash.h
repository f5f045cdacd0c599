// The counter-based uniform of src/ops/dropout.ts that both addons' dropout kernels
// draw from, written once so the masks stay identical bit for bit on every backend:
// element c of a stream (seed, c) is kept when u = bits / 2^24 >= p, bits the top 24
// bits of a hash of c's low word under keys that depend only on the seed and c's high
// word (constant over runs of 2^32 counters, so kernels compute them once per run).
#pragma once
#include <cstdint>

#include "host_device.h"

namespace finlora {
namespace dropout {

// Wellons' "lowbias32" finaliser, as mix32 in src/ops/dropout.ts.
FINLORA_HD inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

struct Keys {
  uint32_t k1, k2;
};

// The keys of the counters whose high word is hi.
FINLORA_HD inline Keys keys_for(uint32_t seed, uint32_t hi) {
  const uint32_t k1 = mix32(mix32(seed ^ 0x9e3779b9u) + hi);
  return {k1, mix32(k1 ^ 0x85ebca6bu)};
}

// The 24 random bits of the counter with low word lo.
FINLORA_HD inline uint32_t bits24(const Keys& k, uint32_t lo) { return mix32(mix32(lo + k.k1) ^ k.k2) >> 8; }

// bits >= threshold  <=>  u = bits / 2^24 >= p, exactly: threshold = ceil(p * 2^24)
// (p * 2^24 is exact in f64).
inline uint32_t keep_threshold(double p) {
  const double scaled = p * 16777216.0;
  return static_cast<uint32_t>(scaled) + (static_cast<double>(static_cast<uint32_t>(scaled)) < scaled ? 1u : 0u);
}

}  // namespace dropout
}  // namespace finlora
