// dropoutMask: the scale mask of inverted dropout from the counter-based uniform of
// src/ops/dropout.ts, bit for bit as native/cpu/kernels/dropout.cc:
// out[i] = u(seed, offset + i) >= p ? 1/(1-p) : 0. Each element depends only on
// (seed, offset + i), so the mask is the same on every backend and launch shape.
//
// dropout applies the mask without storing it: out[i] = x[i] * mask[i] in f32, bit
// for bit x times dropoutMask's output (a bf16 x is widened exactly and the product
// rounded once to bf16), in one pass and with no mask buffer.
//
// dropoutMask ints: [n, seed (uint32), offset (0 <= offset + n <= 2^53)]; floats: [p]; ptrs: [out f32 [n]]
// dropout ints: [n, seed, offset, dtype T]; floats: [p]; ptrs: [x T [n], out T [n] (=)]
// dropoutAdd ints, floats: the same; ptrs: [x T [n], out T [n] (+=)]
#include "dropout_hash.h"
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

using dropout::bits24;
using dropout::Keys;
using dropout::keys_for;

__device__ __forceinline__ float mask_from(uint32_t lo, const Keys& k, uint32_t threshold, float keep) {
  return bits24(k, lo) >= threshold ? keep : 0.0f;
}
__device__ __forceinline__ float mask_at(uint64_t c, uint32_t seed, uint32_t threshold, float keep) {
  return mask_from(static_cast<uint32_t>(c), keys_for(seed, static_cast<uint32_t>(c >> 32)), threshold, keep);
}

__global__ void dropout_mask_kernel(float* out, int64_t n, uint32_t seed, uint64_t offset, uint32_t threshold, float keep) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = mask_at(offset + static_cast<uint64_t>(i), seed, threshold, keep);
}

template <class T, bool VEC>
__global__ void dropout_kernel(const T* x, T* out, int64_t n, uint32_t seed, uint64_t offset, uint32_t threshold, float keep) {
  for (int64_t i = chunk_begin() * 8; i < n; i += chunk_step() * 8) {
    const uint64_t c = offset + static_cast<uint64_t>(i);
    // A chunk inside one run of 2^32 counters (all but one chunk per run) shares its keys.
    if (VEC && i + 8 <= n && (c >> 32) == ((c + 7) >> 32)) {
      float v[8];
      ld8(x + i, v);
      const Keys k = keys_for(seed, static_cast<uint32_t>(c >> 32));
      const uint32_t lo = static_cast<uint32_t>(c);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] *= mask_from(lo + j, k, threshold, keep);
      st8(out + i, v);
    } else {
      for (int64_t e = i; e < i + 8 && e < n; ++e) st(out, e, ld(x, e) * mask_at(c + (e - i), seed, threshold, keep));
    }
  }
}

// out[i] += round_T(x[i] * mask[i]): dropout's product rounded to T as dropout writes it,
// then added as the binary add kernel adds two T tensors (f32 sum, rounded to T once).
// The explicit roundings keep the compiler from fusing the product and the sum.
template <class T>
__global__ void dropout_add_kernel(const T* x, T* out, int64_t n, uint32_t seed, uint64_t offset, uint32_t threshold, float keep) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T prod[1];
    st(prod, 0, __fmul_rn(ld(x, e), mask_at(offset + static_cast<uint64_t>(e), seed, threshold, keep)));
    st(out, e, __fadd_rn(ld(out, e), ld(prod, 0)));
  }
}

struct Params {
  int64_t n;
  uint32_t seed;
  uint64_t offset;
  uint32_t threshold;
  float keep;
};

Params params(const KernelArgs& a) {
  const double p = a.floats[0];
  return {a.ints[0], static_cast<uint32_t>(a.ints[1]), static_cast<uint64_t>(a.ints[2]), dropout::keep_threshold(p),
          static_cast<float>(1.0 / (1.0 - p))};
}

void dropout_mask(const KernelArgs& a) {
  const Params q = params(a);
  if (q.n <= 0) return;
  dropout_mask_kernel<<<grid_for(q.n, 256), 256, 0, stream()>>>(static_cast<float*>(a.ptrs[0]), q.n, q.seed, q.offset,
                                                                 q.threshold, q.keep);
}

template <class T>
void launch(const KernelArgs& a, const Params& q) {
  const T* x = static_cast<const T*>(a.ptrs[0]);
  T* out = static_cast<T*>(a.ptrs[1]);
  const unsigned grid = grid_for((q.n + 7) / 8, 256);
  if (aligned16(x) && aligned16(out))
    dropout_kernel<T, true><<<grid, 256, 0, stream()>>>(x, out, q.n, q.seed, q.offset, q.threshold, q.keep);
  else
    dropout_kernel<T, false><<<grid, 256, 0, stream()>>>(x, out, q.n, q.seed, q.offset, q.threshold, q.keep);
}

void dropout(const KernelArgs& a) {
  const int64_t dt = trailing_dtype(a, 3);
  if (!compute_dtype_ok(a, dt)) return;
  const Params q = params(a);
  if (q.n <= 0) return;
  if (dt == BF16) launch<bf16>(a, q);
  else launch<float>(a, q);
}

void dropout_add(const KernelArgs& a) {
  const int64_t dt = trailing_dtype(a, 3);
  if (!compute_dtype_ok(a, dt)) return;
  const Params q = params(a);
  if (q.n <= 0) return;
  const unsigned grid = grid_for(q.n, 256);
  if (dt == BF16)
    dropout_add_kernel<<<grid, 256, 0, stream()>>>(static_cast<const bf16*>(a.ptrs[0]), static_cast<bf16*>(a.ptrs[1]), q.n, q.seed,
                                                    q.offset, q.threshold, q.keep);
  else
    dropout_add_kernel<<<grid, 256, 0, stream()>>>(static_cast<const float*>(a.ptrs[0]), static_cast<float*>(a.ptrs[1]), q.n, q.seed,
                                                    q.offset, q.threshold, q.keep);
}

}  // namespace

FINLORA_KERNEL("dropoutMask", dropout_mask)
FINLORA_KERNEL("dropout", dropout)
FINLORA_KERNEL("dropoutAdd", dropout_add)

}  // namespace cuda
}  // namespace finlora
