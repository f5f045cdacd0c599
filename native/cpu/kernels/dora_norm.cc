// doraNorm: DoRA's weight norm in the direct form (Liu et al. 2024, "DoRA: Weight-
// Decomposed Low-Rank Adaptation"; src/adapters/lora/dora.ts),
//
//   out[i] = ‖W_i + s·(B·A)_i‖₂,
//
// without the low-rank identity ‖W‖² + 2s·(W·Aᵀ ⊙ B) + s²·‖B·A‖², which subtracts
// nearly equal numbers when an update cancels a row and so needs a check the host has
// to read. Each row of W + s·B·A is formed 64 columns at a time in registers (the r
// rows of A are small enough to stay in cache) and squared at once: W is read once and
// nothing of size rows × cols is written.
//
// doraNorm ints: [rows, cols, r, dtype of w (0 f32, 1 bf16)]; floats: [s]
//   ptrs: [w [rows, cols], a f32 [r, cols], b f32 [rows, r], out f32 [rows] (=)]
//
// Sums: each 512-column stretch of a row accumulates its squares in 64 f32 lanes, and
// the stretches add up in f64, so a row's error stays near that of a 512-term f32 sum
// whatever cols is. A row is one thread's work from start to end, so the result does
// not depend on the thread count. The body is compiled for AVX-512, AVX2+FMA and the
// baseline (nn_simd.h's FINLORA_ISA_VARIANTS) and follows isa().
#include <cmath>
#include <cstring>

#include "kernel.h"
#include "nn_simd.h"

namespace finlora {
namespace {

typedef float v16f __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef uint32_t v16u __attribute__((vector_size(64)));

struct NormParams {
  const void* w;
  bool bf16;
  const float* a;
  const float* b;
  float* out;
  int64_t cols, r;
  float s;
};

#define FINLORA_INLINE_DN inline __attribute__((always_inline))

FINLORA_INLINE_DN v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

FINLORA_INLINE_DN v16f load16_bf16(const uint16_t* p) {
  v16h h;
  std::memcpy(&h, p, sizeof h);
  const v16u u = __builtin_convertvector(h, v16u) << 16;
  v16f v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

FINLORA_INLINE_DN double hsum16(v16f v) {
  double s = 0;
  for (int i = 0; i < 16; ++i) s += static_cast<double>(v[i]);
  return s;
}

FINLORA_INLINE_DN void norm_rows(const NormParams& p, int64_t begin, int64_t end) {
  const int64_t cols = p.cols, r = p.r;
  const int64_t full = cols / 64 * 64;
  for (int64_t i = begin; i < end; ++i) {
    const float* brow = p.b + i * r;
    const float* wf = static_cast<const float*>(p.w) + i * cols;
    const uint16_t* wh = static_cast<const uint16_t*>(p.w) + i * cols;
    double total = 0;
    v16f q0 = {}, q1 = {}, q2 = {}, q3 = {};
    for (int64_t c = 0; c < full; c += 64) {
      v16f x0, x1, x2, x3;
      if (p.bf16) {
        x0 = load16_bf16(wh + c), x1 = load16_bf16(wh + c + 16), x2 = load16_bf16(wh + c + 32), x3 = load16_bf16(wh + c + 48);
      } else {
        x0 = load16(wf + c), x1 = load16(wf + c + 16), x2 = load16(wf + c + 32), x3 = load16(wf + c + 48);
      }
      for (int64_t k = 0; k < r; ++k) {
        const float ck = p.s * brow[k];
        const v16f vk = ck - v16f{};
        const float* ak = p.a + k * cols + c;
        x0 += vk * load16(ak), x1 += vk * load16(ak + 16), x2 += vk * load16(ak + 32), x3 += vk * load16(ak + 48);
      }
      q0 += x0 * x0, q1 += x1 * x1, q2 += x2 * x2, q3 += x3 * x3;
      if ((c + 64) % 512 == 0 || c + 64 == full) {
        total += hsum16((q0 + q1) + (q2 + q3));
        q0 = q1 = q2 = q3 = v16f{};
      }
    }
    for (int64_t c = full; c < cols; ++c) {
      float x = p.bf16 ? bf16_to_f32(wh[c]) : wf[c];
      for (int64_t k = 0; k < r; ++k) x += (p.s * brow[k]) * p.a[k * cols + c];
      total += static_cast<double>(x * x);
    }
    p.out[i] = static_cast<float>(std::sqrt(total));
  }
}

FINLORA_ISA_VARIANTS(dora_norm, norm_rows, NormParams)

void dora_norm_kernel(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1], r = a.ints[2], dtype = a.ints[3];
  if (dtype != F32 && dtype != BF16) {
    a.error = "w must be f32 or bf16";
    return;
  }
  if (rows < 0 || cols < 0 || r < 0) {
    a.error = "negative size";
    return;
  }
  const NormParams p{a.ptrs[0], dtype == BF16, static_cast<const float*>(a.ptrs[1]), static_cast<const float*>(a.ptrs[2]),
                     static_cast<float*>(a.ptrs[3]), cols, r, static_cast<float>(a.floats[0])};
  const auto fn = dora_norm_pick();
  parallel_for(rows, 1 + (1 << 15) / (cols * (r + 1) + 1), [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
}

}  // namespace

FINLORA_KERNEL("doraNorm", dora_norm_kernel)

}  // namespace finlora
