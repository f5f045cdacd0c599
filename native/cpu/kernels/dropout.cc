// dropoutMask: the scale mask of inverted dropout from the counter-based uniform of
// src/ops/dropout.ts, implemented here bit for bit: out[i] = u(seed, offset + i) >= p
// ? 1/(1-p) : 0. Each element depends only on (seed, offset + i), so the mask is the
// same on every backend and for every thread count.
//
// dropout applies the mask without storing it: out[i] = x[i] * mask[i], the same
// product, bit for bit, as x times dropoutMask's output, in one pass instead of three
// (write the mask, read it back with x, write the product) and with no mask buffer.
//
// dropoutMask ints: [n, seed (uint32), offset (0 <= offset + n <= 2^53)]; floats: [p]; ptrs: [out f32 [n]]
// dropout ints: the same; floats: [p]; ptrs: [x f32 [n], out f32 [n] (=)]
// dropoutAdd ints, floats: the same; ptrs: [x f32 [n], out f32 [n] (+=)], out += x * mask
// (the product rounded, then added: what dropout followed by binary add gives)
//
// The hash is plain 32-bit integer arithmetic; the loops are compiled for AVX-512, AVX2
// and the baseline (target_clones), where the vectorizer turns them into 16- or 8-lane
// multiplies and shifts.
#include <cstdint>

#include "dropout_hash.h"
#include "kernel.h"

namespace finlora {
namespace {

using dropout::bits24;
using dropout::Keys;
using dropout::keys_for;

struct MaskParams {
  uint32_t seed, threshold;
  uint64_t offset;
  float keep;
};

MaskParams mask_params(const KernelArgs& a) {
  const double p = a.floats[0];
  return {static_cast<uint32_t>(a.ints[1]), dropout::keep_threshold(p), static_cast<uint64_t>(a.ints[2]), static_cast<float>(1.0 / (1.0 - p))};
}

// Elements [i, stop) share the counter's high word; lo0 is the low word of element i.
FINLORA_CLONES void mask_run(float* __restrict out, int64_t n, uint32_t lo0, Keys k, uint32_t threshold, float keep) {
  for (int64_t j = 0; j < n; ++j) out[j] = bits24(k, lo0 + static_cast<uint32_t>(j)) >= threshold ? keep : 0.0f;
}

FINLORA_CLONES void apply_run(const float* __restrict x, float* __restrict out, int64_t n, uint32_t lo0, Keys k, uint32_t threshold,
                              float keep) {
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] * (bits24(k, lo0 + static_cast<uint32_t>(j)) >= threshold ? keep : 0.0f);
}

FINLORA_CLONES void add_into(const float* __restrict x, float* __restrict out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = out[j] + x[j];
}

// out[j] += x[j] * mask[j]: the products go through a buffer in memory and are added by
// a second loop, so the compiler cannot contract a product and its sum into one fused
// multiply-add (GCC contracts by default in C++): the same two roundings as dropout
// followed by binary add.
void add_run(const float* x, float* out, int64_t n, uint32_t lo0, Keys k, uint32_t threshold, float keep) {
  constexpr int64_t kChunk = 1024;
  float prod[kChunk];
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t len = n - c < kChunk ? n - c : kChunk;
    apply_run(x + c, prod, len, lo0 + static_cast<uint32_t>(c), k, threshold, keep);
    add_into(prod, out + c, len);
  }
}

// Calls run(i, len, lo, keys) over [b, e) in pieces that do not cross a multiple of
// 2^32 in the counter, where the keys change.
template <class Run>
void by_key_runs(const MaskParams& m, int64_t b, int64_t e, const Run& run) {
  int64_t i = b;
  while (i < e) {
    const uint64_t c = m.offset + static_cast<uint64_t>(i);
    const uint32_t hi = static_cast<uint32_t>(c >> 32);
    const uint64_t run_end = (static_cast<uint64_t>(hi) + 1) << 32;
    const int64_t stop = static_cast<int64_t>(run_end - m.offset) < e ? static_cast<int64_t>(run_end - m.offset) : e;
    run(i, stop - i, static_cast<uint32_t>(c), keys_for(m.seed, hi));
    i = stop;
  }
}

void dropout_mask_kernel(const KernelArgs& a) {
  const int64_t n = a.ints[0];
  const MaskParams m = mask_params(a);
  float* out = static_cast<float*>(a.ptrs[0]);
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    by_key_runs(m, b, e, [&](int64_t i, int64_t len, uint32_t lo, Keys k) { mask_run(out + i, len, lo, k, m.threshold, m.keep); });
  });
}

using XRunFn = void (*)(const float*, float*, int64_t, uint32_t, Keys, uint32_t, float);

// The kernels that read x (ptrs[0]) and write out (ptrs[1]), n elements: `run` over
// each stretch of the mask that shares its keys, in parallel.
void run_with_x(const KernelArgs& a, XRunFn run) {
  const int64_t n = a.ints[0];
  const MaskParams m = mask_params(a);
  const float* x = static_cast<const float*>(a.ptrs[0]);
  float* out = static_cast<float*>(a.ptrs[1]);
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    by_key_runs(m, b, e, [&](int64_t i, int64_t len, uint32_t lo, Keys k) { run(x + i, out + i, len, lo, k, m.threshold, m.keep); });
  });
}

void dropout_kernel(const KernelArgs& a) { run_with_x(a, apply_run); }
void dropout_add_kernel(const KernelArgs& a) { run_with_x(a, add_run); }

}  // namespace

FINLORA_KERNEL("dropoutMask", dropout_mask_kernel)
FINLORA_KERNEL("dropout", dropout_kernel)
FINLORA_KERNEL("dropoutAdd", dropout_add_kernel)

}  // namespace finlora
