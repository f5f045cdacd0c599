// The AVX2 and AVX-512 GEMM micro-kernels and packers (gemm.h's layouts and C update
// rule), written once over an instruction set's traits V. gemm/avx2.cc (a 6 x 16 tile
// of 8-float vectors) and gemm/avx512.cc (14 x 32, 16-float vectors) define V and
// instantiate these from their target-specific entry points, marked with simd_math.h's
// FINLORA_AVX2_FN / FINLORA_AVX512_FN, whose `flatten` inlines the templates there.
//
// V has simd_x86.h's Avx2Regs / Avx512Regs members (F, W, set1, mul, fma, zero,
// transpose), and:
//   Lanes                     a lane mask
//   first_lanes(n)            lanes [0, min(n, W))
//   tail_mask(t)              lanes [0, t) for 1 <= t <= W (the last vector of a row of C)
//   broadcast(p)              *p in every lane
//   load_aligned(p), store_aligned(p, v)
//   load(p, m), store(p, m, v)  masked (lanes outside m load as 0 and are not stored);
//                             load reads f32 and, where V packs bf16 B, uint16_t
//   store_cols(p, r, add, last, tail, tail_mask)
//                             writes one vector of a row of C: r (+ p when add), with
//                             only `tail` columns when `last` is the row's last vector
//   kPrefetchC, kPrefetchA    the prefetches that paid off on that instruction set (see
//                             tile and pack_a)
#pragma once
#include <cstdint>

#include "simd_x86.h"

#if defined(__x86_64__)

namespace finlora {
namespace gemm {
namespace x86 {

// The R x (NV vectors) corner of the MR x 2W product of one A and one B micro-panel:
// one broadcast of A and NV vectors of B per k step, R * NV accumulators.
template <class V, int MR, int R, int NV>
inline void tile(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t ldc,
                 int cols, float alpha, bool add) {
  using F = typename V::F;
  constexpr int W = V::W, NR = 2 * W;
  F acc[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  if constexpr (V::kPrefetchC) {
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      if (NV > 1) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + W), _MM_HINT_T0);
    }
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    F bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = V::load_aligned(b + k * NR + W * v);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const F av = V::broadcast(a + k * MR + i);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(av, bv[v], acc[i][v]);
    }
  }
  const F al = V::set1(alpha);
  const int tail = cols - W * (NV - 1);  // columns in the last vector, 1..W
  const typename V::Lanes last = V::tail_mask(tail);
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    float* row = c + i * ldc;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) V::store_cols(row + W * v, V::mul(acc[i][v], al), add, v == NV - 1, tail, last);
  }
}

// Tiles::template run<R, NV> for `rows` rows (R counting down from MR; 1 for any other
// count).
template <class Tiles, int NV, int R>
inline void tile_rows(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols, float alpha,
                      bool add) {
  if constexpr (R > 1) {
    if (rows != R) return tile_rows<Tiles, NV, R - 1>(kc, a, b, c, ldc, rows, cols, alpha, add);
  }
  Tiles::template run<R, NV>(kc, a, b, c, ldc, cols, alpha, add);
}

// gemm.h's MicroKernelFn over Tiles, a struct whose `template <int R, int NV> static
// void run(kc, a, b, c, ldc, cols, alpha, add)` instantiates tile in a target region:
// one vector of columns when cols <= W, else two.
template <class Tiles, int MR, int W>
void micro_kernel(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols, float alpha,
                  bool add) {
  if (cols > W) tile_rows<Tiles, 2, MR>(kc, a, b, c, ldc, rows, cols, alpha, add);
  else tile_rows<Tiles, 1, MR>(kc, a, b, c, ldc, rows, cols, alpha, add);
}

// gemm.h's PackAFn. Row-major A goes through W x W in-register transposes instead of a
// scalar gather over MR strided streams; column-major A is already panel-shaped.
template <class V, int MR>
inline bool pack_a(const float* a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, float* dst) {
  using F = typename V::F;
  constexpr int W = V::W;
  if (cs != 1 && rs != 1) return false;
  const typename V::Lanes panel = V::first_lanes(MR);
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const int rows = static_cast<int>(mc - i0 < MR ? mc - i0 : MR);
    const float* src = a + i0 * rs;
    if (cs == 1) {
      for (int64_t k0 = 0; k0 < kc; k0 += W) {
        const int64_t kn = kc - k0 < W ? kc - k0 : W;
        const typename V::Lanes m = V::first_lanes(kn);
        F r[W];
        if constexpr (V::kPrefetchA) {
          // Each row is its own stream (dlogits' rows are 128 KB apart), more than the
          // hardware prefetchers follow: ask for each row's line four lines ahead.
          for (int i = 0; i < rows; ++i) _mm_prefetch(reinterpret_cast<const char*>(src + i * rs + k0 + 64), _MM_HINT_T0);
        }
        for (int i = 0; i < W; ++i) r[i] = i < rows ? V::load(src + i * rs + k0, m) : V::zero();
        V::transpose(r);
        for (int64_t t = 0; t < kn; ++t) V::store(dst + (k0 + t) * MR, panel, r[t]);
      }
    } else {
      const typename V::Lanes m = V::first_lanes(rows);
      for (int64_t k = 0; k < kc; ++k) V::store(dst + k * MR, panel, V::load(src + k * cs, m));
    }
  }
  return true;
}

// gemm.h's PackBF32Fn / PackBBf16Fn (T = float / uint16_t) for micro-panels of 2W
// columns. Row-major B is copied row by row; transposed B (the Linear weight
// [out, in]) goes through W x W in-register transposes, one half of the panel at a time.
template <class V, class T>
inline bool pack_b(const T* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  using F = typename V::F;
  constexpr int W = V::W, NR = 2 * W;
  if (cs == 1) {
    const typename V::Lanes m0 = V::first_lanes(cols), m1 = V::first_lanes(cols > W ? cols - W : 0);
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = b + k * rs;
      // The next micro-panel's rows: each is a new page, too far apart for the
      // hardware prefetchers; the micro-kernels run in between hide the latency.
      for (int l = 0; l < NR / 16; ++l) _mm_prefetch(reinterpret_cast<const char*>(s + NR + 16 * l), _MM_HINT_T1);
      V::store_aligned(dst + k * NR, V::load(s, m0));
      V::store_aligned(dst + k * NR + W, V::load(s + W, m1));
    }
    return true;
  }
  if (rs != 1) return false;
  for (int half = 0; half < 2; ++half) {
    const int j0 = W * half;
    const int n = cols - j0;
    if (n <= 0) {
      for (int64_t k = 0; k < kc; ++k) V::store_aligned(dst + k * NR + j0, V::zero());
      continue;
    }
    for (int64_t k0 = 0; k0 < kc; k0 += W) {
      const int64_t kn = kc - k0 < W ? kc - k0 : W;
      const typename V::Lanes m = V::first_lanes(kn);
      F r[W];
      for (int i = 0; i < W; ++i) r[i] = i < n ? V::load(b + (j0 + i) * cs + k0, m) : V::zero();
      V::transpose(r);
      for (int64_t t = 0; t < kn; ++t) V::store_aligned(dst + (k0 + t) * NR + j0, r[t]);
    }
  }
  return true;
}

}  // namespace x86
}  // namespace gemm
}  // namespace finlora

#endif  // __x86_64__
