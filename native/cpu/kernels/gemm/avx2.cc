// AVX2 + FMA GEMM micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators (of 16
// registers), one broadcast of A and two 8-float vectors of B per k step. Corners with
// fewer rows or at most 8 columns get their own unrolled instances; packers with 8 x 8
// in-register transposes for row-major A and transposed B. Compiled with a
// target attribute so the addon builds for baseline x86-64; used only when
// finlora::isa() allows. Layouts and the C update rule: gemm.h.
#include "gemm.h"

#if defined(__x86_64__)
#include "simd_x86.h"

namespace finlora {
namespace gemm {
namespace {

using simd::first_lanes8;
using simd::transpose8;

constexpr int MR = 6;
constexpr int NR = 16;

template <int R, int NV>
FINLORA_AVX2_TARGET void tile(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                              int64_t ldc, int cols, float alpha, bool add) {
  __m256 acc[R][NV];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_load_ps(b + k * NR + 8 * v);
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + k * MR + i);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
  const __m256 al = _mm256_set1_ps(alpha);
  const int tail = cols - 8 * (NV - 1);  // columns in the last vector, 1..8
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane);
  const __m256i full = _mm256_set1_epi32(-1);
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) {
    float* row = c + i * ldc;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      __m256 r = _mm256_mul_ps(acc[i][v], al);
      if (v < NV - 1 || tail == 8) {
        if (add) r = _mm256_add_ps(r, _mm256_loadu_ps(row + 8 * v));
        _mm256_storeu_ps(row + 8 * v, r);
      } else {
        const __m256i m = v == NV - 1 ? last : full;
        if (add) r = _mm256_add_ps(r, _mm256_maskload_ps(row + 8 * v, m));
        _mm256_maskstore_ps(row + 8 * v, m, r);
      }
    }
  }
}

template <int NV>
FINLORA_AVX2_TARGET void dispatch_rows(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows,
                                       int cols, float alpha, bool add) {
  switch (rows) {
    case 6: return tile<6, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 5: return tile<5, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 4: return tile<4, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 3: return tile<3, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 2: return tile<2, NV>(kc, a, b, c, ldc, cols, alpha, add);
    default: return tile<1, NV>(kc, a, b, c, ldc, cols, alpha, add);
  }
}

FINLORA_AVX2_TARGET void run(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols,
                             float alpha, bool add) {
  if (cols > 8) dispatch_rows<2>(kc, a, b, c, ldc, rows, cols, alpha, add);
  else dispatch_rows<1>(kc, a, b, c, ldc, rows, cols, alpha, add);
}

// ------------------------------------------------------------------ packing
// Row-major A and transposed B (the Linear weight [out, in]) go through 8 x 8
// in-register transposes instead of a scalar gather over 6 or 16 strided streams, as
// on AVX-512 (avx512.cc); f32 only (bf16 B takes the portable loops).

FINLORA_AVX2_TARGET bool pack_a(const float* a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, float* dst) {
  if (cs != 1 && rs != 1) return false;
  const __m256i panel = first_lanes8(MR);
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const int rows = static_cast<int>(mc - i0 < MR ? mc - i0 : MR);
    const float* src = a + i0 * rs;
    if (cs == 1) {
      for (int64_t k0 = 0; k0 < kc; k0 += 8) {
        const int64_t kn = kc - k0 < 8 ? kc - k0 : 8;
        const __m256i m = first_lanes8(kn);
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_maskload_ps(src + i * rs + k0, m) : _mm256_setzero_ps();
        transpose8(r);
        for (int64_t t = 0; t < kn; ++t) _mm256_maskstore_ps(dst + (k0 + t) * MR, panel, r[t]);
      }
    } else {
      const __m256i m = first_lanes8(rows);
      for (int64_t k = 0; k < kc; ++k) _mm256_maskstore_ps(dst + k * MR, panel, _mm256_maskload_ps(src + k * cs, m));
    }
  }
  return true;
}

FINLORA_AVX2_TARGET bool pack_b_f32(const float* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  if (cs == 1) {
    const __m256i m0 = first_lanes8(cols), m1 = first_lanes8(cols > 8 ? cols - 8 : 0);
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = b + k * rs;
      _mm_prefetch(reinterpret_cast<const char*>(s + NR), _MM_HINT_T1);  // the next micro-panel's row
      _mm256_store_ps(dst + k * NR, _mm256_maskload_ps(s, m0));
      _mm256_store_ps(dst + k * NR + 8, _mm256_maskload_ps(s + 8, m1));
    }
    return true;
  }
  if (rs != 1) return false;
  for (int half = 0; half < 2; ++half) {
    const int j0 = 8 * half;
    const int n = cols - j0;
    if (n <= 0) {
      for (int64_t k = 0; k < kc; ++k) _mm256_store_ps(dst + k * NR + j0, _mm256_setzero_ps());
      continue;
    }
    for (int64_t k0 = 0; k0 < kc; k0 += 8) {
      const int64_t kn = kc - k0 < 8 ? kc - k0 : 8;
      const __m256i m = first_lanes8(kn);
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = i < n ? _mm256_maskload_ps(b + (j0 + i) * cs + k0, m) : _mm256_setzero_ps();
      transpose8(r);
      for (int64_t t = 0; t < kn; ++t) _mm256_store_ps(dst + (k0 + t) * NR + j0, r[t]);
    }
  }
  return true;
}

const MicroKernel kKernel{"avx2 6x16", MR, NR, 144, 256, 4096, run, pack_a, pack_b_f32, nullptr, nullptr};

}  // namespace

const MicroKernel* avx2_micro_kernel() { return &kKernel; }

}  // namespace gemm
}  // namespace finlora

#else

namespace finlora {
namespace gemm {
const MicroKernel* avx2_micro_kernel() { return nullptr; }
}  // namespace gemm
}  // namespace finlora

#endif
