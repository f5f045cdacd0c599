// dropoutMask: the scale mask of inverted dropout from the counter-based uniform of
// src/ops/dropout.ts, bit for bit as native/cpu/kernels/dropout.cc:
// out[i] = u(seed, offset + i) >= p ? 1/(1-p) : 0. Each element depends only on
// (seed, offset + i), so the mask is the same on every backend and launch shape.
//
// ints: [n, seed (uint32), offset (0 <= offset + n <= 2^53)]; floats: [p]; ptrs: [out f32 [n]]
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

// Wellons' "lowbias32" finaliser, as mix32 in src/ops/dropout.ts.
__device__ __forceinline__ uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__global__ void dropout_kernel(float* out, int64_t n, uint32_t seed, uint64_t offset, uint32_t threshold, float keep) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t c = offset + static_cast<uint64_t>(i);
    const uint32_t hi = static_cast<uint32_t>(c >> 32), lo = static_cast<uint32_t>(c);
    const uint32_t k1 = mix32(mix32(seed ^ 0x9e3779b9u) + hi);
    const uint32_t k2 = mix32(k1 ^ 0x85ebca6bu);
    const uint32_t bits = mix32(mix32(lo + k1) ^ k2) >> 8;
    out[i] = bits >= threshold ? keep : 0.0f;
  }
}

void dropout_mask(const KernelArgs& a) {
  const int64_t n = a.ints[0];
  if (n <= 0) return;
  const uint32_t seed = static_cast<uint32_t>(a.ints[1]);
  const uint64_t offset = static_cast<uint64_t>(a.ints[2]);
  const double p = a.floats[0];
  const float keep = static_cast<float>(1.0 / (1.0 - p));
  // u = bits / 2^24 >= p  <=>  bits >= ceil(p * 2^24), exactly (p * 2^24 is exact in f64)
  const double scaled = p * 16777216.0;
  const uint32_t threshold = static_cast<uint32_t>(scaled) + (static_cast<double>(static_cast<uint32_t>(scaled)) < scaled ? 1u : 0u);
  dropout_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(static_cast<float*>(a.ptrs[0]), n, seed, offset, threshold, keep);
}

}  // namespace

FINLORA_CUDA_KERNEL("dropoutMask", dropout_mask)

}  // namespace cuda
}  // namespace finlora
