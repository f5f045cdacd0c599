// doraNorm: DoRA's weight norm in the direct form (Liu et al. 2024, "DoRA: Weight-
// Decomposed Low-Rank Adaptation"; src/adapters/lora/dora.ts),
//
//   out[i] = ‖W_i + s·(B·A)_i‖₂,
//
// without the low-rank identity ‖W‖² + 2s·(W·Aᵀ ⊙ B) + s²·‖B·A‖², which subtracts
// nearly equal numbers when an update cancels a row and so needs a check the host has
// to read. Rows of W + s·B·A are formed 32 columns at a time in registers and squared
// at once, four rows sharing each loaded column of A, over 512-column stretches whose
// r rows of A stay in L1 while a tile of 64 rows passes: W is read once and nothing of
// size rows × cols is written.
//
// doraNorm ints: [rows, cols, r, dtype of w (0 f32, 1 bf16)]; floats: [s]
//   ptrs: [w [rows, cols], a f32 [r, cols], b f32 [rows, r], out f32 [rows] (=)]
//
// Sums: each 512-column stretch of a row accumulates its squares in 32 f32 lanes, and
// the stretches add up in f64 in column order, so a row's error stays near that of a
// 16-term f32 sum whatever cols is. A row's arithmetic does not depend on which rows
// share its loads or on the thread that runs it, so the result does not depend on the
// thread count. The body is compiled for AVX-512, AVX2+FMA and the baseline
// (nn_simd.h's FINLORA_ISA_VARIANTS) and follows isa().
#include <cmath>
#include <cstring>
#include <vector>

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
  const float* sb;  // s·B [rows, r]
  float* out;
  int64_t cols, r;
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

FINLORA_INLINE_DN double hsum16(const v16f& v) {
  double s = 0;
  for (int i = 0; i < 16; ++i) s += static_cast<double>(v[i]);
  return s;
}

FINLORA_INLINE_DN v16f load_w(const NormParams& p, int64_t i, int64_t c) {
  return p.bf16 ? load16_bf16(static_cast<const uint16_t*>(p.w) + i * p.cols + c) : load16(static_cast<const float*>(p.w) + i * p.cols + c);
}

// Adds to total[j] the squares of W_i + s·B_i·A over columns [c0, c1) of rows
// i = i0 + j, j < NR: 32 columns at a time, each loaded column of A serving NR rows.
template <int NR>
FINLORA_INLINE_DN void stretch(const NormParams& p, int64_t i0, int64_t c0, int64_t c1, double* total) {
  const int64_t cols = p.cols, r = p.r;
  const int64_t full = c0 + (c1 - c0) / 32 * 32;
  v16f q[NR][2];
  for (int j = 0; j < NR; ++j) q[j][0] = q[j][1] = v16f{};
  for (int64_t c = c0; c < full; c += 32) {
    v16f x[NR][2];
    for (int j = 0; j < NR; ++j) x[j][0] = load_w(p, i0 + j, c), x[j][1] = load_w(p, i0 + j, c + 16);
    for (int64_t k = 0; k < r; ++k) {
      const v16f a0 = load16(p.a + k * cols + c), a1 = load16(p.a + k * cols + c + 16);
      for (int j = 0; j < NR; ++j) {
        const v16f ck = p.sb[(i0 + j) * r + k] - v16f{};
        x[j][0] += ck * a0, x[j][1] += ck * a1;
      }
    }
    for (int j = 0; j < NR; ++j) q[j][0] += x[j][0] * x[j][0], q[j][1] += x[j][1] * x[j][1];
  }
  for (int j = 0; j < NR; ++j) {
    double t = hsum16(q[j][0] + q[j][1]);
    const int64_t i = i0 + j;
    for (int64_t c = full; c < c1; ++c) {
      float x = p.bf16 ? bf16_to_f32(static_cast<const uint16_t*>(p.w)[i * cols + c]) : static_cast<const float*>(p.w)[i * cols + c];
      for (int64_t k = 0; k < r; ++k) x += p.sb[i * r + k] * p.a[k * cols + c];
      t += static_cast<double>(x * x);
    }
    total[j] += t;
  }
}

// Rows [begin, end) in tiles of kTile rows; each tile walks the columns in stretches of
// kStretch (the r rows of A for one stretch stay in L1 while the tile's rows pass) and
// its rows in groups of four.
constexpr int64_t kTile = 64, kStretch = 512;

FINLORA_INLINE_DN void norm_rows(const NormParams& p, int64_t begin, int64_t end) {
  double total[kTile];
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    const int64_t t1 = end - t0 < kTile ? end : t0 + kTile;
    for (int64_t i = t0; i < t1; ++i) total[i - t0] = 0;
    for (int64_t c0 = 0; c0 < p.cols; c0 += kStretch) {
      const int64_t c1 = p.cols - c0 < kStretch ? p.cols : c0 + kStretch;
      int64_t i = t0;
      for (; i + 4 <= t1; i += 4) stretch<4>(p, i, c0, c1, total + (i - t0));
      for (; i < t1; ++i) stretch<1>(p, i, c0, c1, total + (i - t0));
    }
    for (int64_t i = t0; i < t1; ++i) p.out[i] = static_cast<float>(std::sqrt(total[i - t0]));
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
  const float s = static_cast<float>(a.floats[0]);
  const float* b = static_cast<const float*>(a.ptrs[2]);
  std::vector<float> sb(static_cast<size_t>(rows * r));
  for (size_t i = 0; i < sb.size(); ++i) sb[i] = s * b[i];
  const NormParams p{a.ptrs[0], dtype == BF16, static_cast<const float*>(a.ptrs[1]), sb.data(), static_cast<float*>(a.ptrs[3]), cols, r};
  const auto fn = dora_norm_pick();
  parallel_for(rows, 1 + (1 << 15) / (cols * (r + 1) + 1), [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
}

}  // namespace

FINLORA_KERNEL("doraNorm", dora_norm_kernel)

}  // namespace finlora
