// AVX-512 GEMM micro-kernel: a 14 x 32 tile of C held in 28 zmm accumulators, one
// broadcast of A and two 16-float vectors of B per k step (28 FMAs). Smaller corners
// (fewer rows, or at most 16 columns) get their own unrolled instances so skinny
// shapes do not pay for padding rows. Compiled for AVX-512 with a target attribute
// so the addon still builds for baseline x86-64; matmul.cc only calls it when
// finlora::isa() says the CPU has it. Layouts and the C update rule: gemm.h.
#include "gemm.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers give many unmasked intrinsics an undefined merge source
// (`__m512 __Y = __Y;`), which -Wuninitialized then reports wherever one is inlined.
// The warnings are about the headers, not this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>
#include <cstdint>

#include "simd_x86.h"

namespace finlora {
namespace gemm {
namespace {

using simd::first_lanes16;
using simd::transpose16;

constexpr int MR = 14;
constexpr int NR = 32;

template <int R, int NV>
FINLORA_AVX512_TARGET void tile(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                                int64_t ldc, int cols, float alpha, bool add) {
  __m512 acc[R][NV];
#pragma GCC unroll 14
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int i = 0; i < R; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    if (NV > 1) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + k * NR + 16 * v);
#pragma GCC unroll 14
    for (int i = 0; i < R; ++i) {
      const __m512 av = _mm512_set1_ps(a[k * MR + i]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
  const __m512 al = _mm512_set1_ps(alpha);
  const int tail = cols - 16 * (NV - 1);  // columns in the last vector, 1..16
  const __mmask16 last = static_cast<__mmask16>(tail >= 16 ? 0xffff : (1u << tail) - 1u);
#pragma GCC unroll 14
  for (int i = 0; i < R; ++i) {
    float* row = c + i * ldc;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? last : static_cast<__mmask16>(0xffff);
      __m512 r = _mm512_mul_ps(acc[i][v], al);
      if (add) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, row + 16 * v));
      _mm512_mask_storeu_ps(row + 16 * v, m, r);
    }
  }
}

template <int NV>
FINLORA_AVX512_TARGET void dispatch_rows(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows,
                                         int cols, float alpha, bool add) {
  switch (rows) {
    case 14: return tile<14, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 13: return tile<13, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 12: return tile<12, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 11: return tile<11, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 10: return tile<10, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 9: return tile<9, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 8: return tile<8, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 7: return tile<7, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 6: return tile<6, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 5: return tile<5, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 4: return tile<4, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 3: return tile<3, NV>(kc, a, b, c, ldc, cols, alpha, add);
    case 2: return tile<2, NV>(kc, a, b, c, ldc, cols, alpha, add);
    default: return tile<1, NV>(kc, a, b, c, ldc, cols, alpha, add);
  }
}

FINLORA_AVX512_TARGET void run(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols,
                               float alpha, bool add) {
  if (cols > 16) dispatch_rows<2>(kc, a, b, c, ldc, rows, cols, alpha, add);
  else dispatch_rows<1>(kc, a, b, c, ldc, rows, cols, alpha, add);
}

// ------------------------------------------------------------------ packing
// Row-major A and transposed B (the Linear weight [out, in]) have to be transposed
// into their micro-panels; a scalar gather over 14 or 32 strided streams costs as much
// as a fifth of the product, so those layouts go through 16 x 16 in-register
// transposes. bf16 is widened to f32 on load (a 16-bit shift: bf16 is f32's top half).

FINLORA_AVX512_TARGET inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

FINLORA_AVX512_TARGET inline __m512 load16(const uint16_t* p, __mmask16 m) { return simd::load_bf16x16(p, m); }

FINLORA_AVX512_TARGET bool pack_a(const float* a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, float* dst) {
  if (cs != 1 && rs != 1) return false;
  const __mmask16 panel = first_lanes16(MR);
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const int rows = static_cast<int>(mc - i0 < MR ? mc - i0 : MR);
    const float* src = a + i0 * rs;
    if (cs == 1) {
      for (int64_t k0 = 0; k0 < kc; k0 += 16) {
        const int64_t kn = kc - k0 < 16 ? kc - k0 : 16;
        const __mmask16 m = first_lanes16(kn);
        __m512 r[16];
        // Each row is its own stream (dlogits' rows are 128 KB apart), more than the
        // hardware prefetchers follow: ask for each row's line four lines ahead.
        for (int i = 0; i < rows; ++i) _mm_prefetch(reinterpret_cast<const char*>(src + i * rs + k0 + 64), _MM_HINT_T0);
        for (int i = 0; i < 16; ++i) r[i] = i < rows ? load16(src + i * rs + k0, m) : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t t = 0; t < kn; ++t) _mm512_mask_storeu_ps(dst + (k0 + t) * MR, panel, r[t]);
      }
    } else {
      const __mmask16 m = first_lanes16(rows);
      for (int64_t k = 0; k < kc; ++k) _mm512_mask_storeu_ps(dst + k * MR, panel, load16(src + k * cs, m));
    }
  }
  return true;
}

template <typename T>
FINLORA_AVX512_TARGET bool pack_b(const T* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  if (cs == 1) {
    const __mmask16 m0 = first_lanes16(cols), m1 = first_lanes16(cols > 16 ? cols - 16 : 0);
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = b + k * rs;
      // The next micro-panel's rows: each is a new page, too far apart for the
      // hardware prefetchers; the micro-kernels run in between hide the latency.
      _mm_prefetch(reinterpret_cast<const char*>(s + NR), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(s + NR + 16), _MM_HINT_T1);
      _mm512_store_ps(dst + k * NR, load16(s, m0));
      _mm512_store_ps(dst + k * NR + 16, load16(s + 16, m1));
    }
    return true;
  }
  if (rs != 1) return false;
  for (int half = 0; half < 2; ++half) {
    const int j0 = 16 * half;
    const int n = cols - j0;
    if (n <= 0) {
      for (int64_t k = 0; k < kc; ++k) _mm512_store_ps(dst + k * NR + j0, _mm512_setzero_ps());
      continue;
    }
    for (int64_t k0 = 0; k0 < kc; k0 += 16) {
      const int64_t kn = kc - k0 < 16 ? kc - k0 : 16;
      const __mmask16 m = first_lanes16(kn);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = i < n ? load16(b + (j0 + i) * cs + k0, m) : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t t = 0; t < kn; ++t) _mm512_store_ps(dst + (k0 + t) * NR + j0, r[t]);
    }
  }
  return true;
}

FINLORA_AVX512_TARGET bool pack_b_f32(const float* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  return pack_b(b, rs, cs, kc, cols, dst);
}
FINLORA_AVX512_TARGET bool pack_b_bf16(const uint16_t* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  return pack_b(b, rs, cs, kc, cols, dst);
}

// ------------------------------------------------------------------ narrow products
// R rows of x against J rows of y: R x J accumulators of 16 partial sums each, R + J
// loads per 16-deep step for R * J FMAs (3 x 8: 11 loads, 24 FMAs).

template <typename TX, int R, int J>
FINLORA_AVX512_TARGET void narrow_block(const TX* x, int64_t ldx, const float* y, int64_t ldy, int64_t kn, float* c,
                                        int64_t c_rs, int64_t c_cs, float alpha, bool add) {
  // Every loop over r and j is unrolled so that the accumulators stay in registers.
  __m512 acc[R][J];
#pragma GCC unroll 3
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kn; k += 16) {
    const __mmask16 m = first_lanes16(kn - k);
    __m512 xv[R];
#pragma GCC unroll 3
    for (int r = 0; r < R; ++r) xv[r] = load16(x + r * ldx + k, m);
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      const __m512 yv = _mm512_maskz_loadu_ps(m, y + j * ldy + k);
#pragma GCC unroll 3
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(xv[r], yv, acc[r][j]);
    }
  }
#pragma GCC unroll 3
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      const float s = alpha * _mm512_reduce_add_ps(acc[r][j]);
      float* o = c + r * c_rs + j * c_cs;
      *o = add ? *o + s : s;
    }
  }
}

template <typename TX>
using NarrowBlockFn = void (*)(const TX*, int64_t, const float*, int64_t, int64_t, float*, int64_t, int64_t, float, bool);

template <typename TX, int R>
constexpr NarrowBlockFn<TX> kNarrowRow[8] = {narrow_block<TX, R, 1>, narrow_block<TX, R, 2>, narrow_block<TX, R, 3>,
                                             narrow_block<TX, R, 4>, narrow_block<TX, R, 5>, narrow_block<TX, R, 6>,
                                             narrow_block<TX, R, 7>, narrow_block<TX, R, 8>};

template <typename TX>
FINLORA_AVX512_TARGET void narrow_typed(const TX* x, int64_t ldx, const float* y, int64_t ldy, int64_t K, int64_t n, float* c,
                                        int64_t c_rs, int64_t c_cs, int64_t rows, float alpha, bool add) {
  // K in chunks whose slice of y (n x chunk) stays in L1 while every row of x passes it.
  const int64_t chunk = std::max<int64_t>(256, 8192 / n / 16 * 16);
  for (int64_t k0 = 0; k0 < K; k0 += chunk) {
    const int64_t kn = std::min(chunk, K - k0);
    const bool add_here = add || k0 > 0;
    for (int64_t i = 0; i < rows; i += 3) {
      const int64_t r = std::min<int64_t>(3, rows - i);
      for (int64_t j = 0; j < n; j += 8) {
        const int64_t jn = std::min<int64_t>(8, n - j);
        const NarrowBlockFn<TX> f =
            r == 3 ? kNarrowRow<TX, 3>[jn - 1] : r == 2 ? kNarrowRow<TX, 2>[jn - 1] : kNarrowRow<TX, 1>[jn - 1];
        f(x + i * ldx + k0, ldx, y + j * ldy + k0, ldy, kn, c + i * c_rs + j * c_cs, c_rs, c_cs, alpha, add_here);
      }
    }
  }
}

FINLORA_AVX512_TARGET void narrow(const void* x, bool x_bf16, int64_t ldx, const float* y, int64_t ldy, int64_t K, int64_t n,
                                  float* c, int64_t c_rs, int64_t c_cs, int64_t rows, float alpha, bool add) {
  if (x_bf16) narrow_typed(static_cast<const uint16_t*>(x), ldx, y, ldy, K, n, c, c_rs, c_cs, rows, alpha, add);
  else narrow_typed(static_cast<const float*>(x), ldx, y, ldy, K, n, c, c_rs, c_cs, rows, alpha, add);
}

// kc = 512 halves the passes over C that 256 needs and measured faster on Zen 5; the
// B micro-panel (64 KiB) then streams from L2, which has bandwidth to spare for 128
// bytes per 14 cycles.
const MicroKernel kKernel{"avx512 14x32", MR, NR, 280, 512, 4096, run, pack_a, pack_b_f32, pack_b_bf16, narrow};

}  // namespace

const MicroKernel* avx512_micro_kernel() { return &kKernel; }

}  // namespace gemm
}  // namespace finlora

#else

namespace finlora {
namespace gemm {
const MicroKernel* avx512_micro_kernel() { return nullptr; }
}  // namespace gemm
}  // namespace finlora

#endif
