// AVX-512 GEMM micro-kernel: a 14 x 32 tile of C held in 28 zmm accumulators, one
// broadcast of A and two 16-float vectors of B per k step (28 FMAs). Smaller corners
// (fewer rows, or at most 16 columns) get their own unrolled instances so skinny
// shapes do not pay for padding rows; packers with 16 x 16 in-register transposes for
// row-major A and transposed B (f32 or bf16). Those are gemm/x86.h's, shared with
// AVX2, over the traits below; the narrow products are this file's own. Compiled for
// AVX-512 with a target attribute so the addon still builds for baseline x86-64;
// matmul.cc only calls it when finlora::isa() says the CPU has it. Layouts and the C
// update rule: gemm.h.
#include "gemm.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers give many unmasked intrinsics an undefined merge source
// (`__m512 __Y = __Y;`), which -Wuninitialized then reports wherever one is inlined.
// The warnings are about the headers, not this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>
#include <cstdint>

#include "x86.h"

namespace finlora {
namespace gemm {
namespace {

using simd::first_lanes16;

constexpr int MR = 14;
constexpr int NR = 32;

// Masked loads widen bf16 to f32 (a 16-bit shift: bf16 is f32's top half), so the
// packers and the narrow products read bf16 weights in place.
FINLORA_AVX512_TARGET inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
FINLORA_AVX512_TARGET inline __m512 load16(const uint16_t* p, __mmask16 m) { return simd::load_bf16x16(p, m); }

struct Avx512Gemm : simd::Avx512Regs {
  using Lanes = __mmask16;
  // Measured faster here (x86.h says why), not tried on AVX2.
  static constexpr bool kPrefetchC = true;
  static constexpr bool kPrefetchA = true;
  FINLORA_AVX512_TARGET static inline Lanes first_lanes(int64_t n) { return first_lanes16(n); }
  FINLORA_AVX512_TARGET static inline Lanes tail_mask(int t) { return first_lanes16(t); }
  FINLORA_AVX512_TARGET static inline F broadcast(const float* p) { return _mm512_set1_ps(*p); }
  FINLORA_AVX512_TARGET static inline F load_aligned(const float* p) { return _mm512_load_ps(p); }
  FINLORA_AVX512_TARGET static inline void store_aligned(float* p, const F& v) { _mm512_store_ps(p, v); }
  template <typename T>
  FINLORA_AVX512_TARGET static inline F load(const T* p, Lanes m) { return load16(p, m); }
  FINLORA_AVX512_TARGET static inline void store(float* p, Lanes m, const F& v) { _mm512_mask_storeu_ps(p, m, v); }
  FINLORA_AVX512_TARGET static inline void store_cols(float* p, F r, bool add, bool last, int, Lanes tail_mask) {
    const __mmask16 m = last ? tail_mask : static_cast<__mmask16>(0xffff);
    if (add) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, p));
    _mm512_mask_storeu_ps(p, m, r);
  }
};

struct Tiles {
  template <int R, int NV>
  FINLORA_AVX512_FN static void run(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                                    int64_t ldc, int cols, float alpha, bool add) {
    x86::tile<Avx512Gemm, MR, R, NV>(kc, a, b, c, ldc, cols, alpha, add);
  }
};

FINLORA_AVX512_FN bool pack_a(const float* a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, float* dst) {
  return x86::pack_a<Avx512Gemm, MR>(a, rs, cs, mc, kc, dst);
}
FINLORA_AVX512_FN bool pack_b_f32(const float* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  return x86::pack_b<Avx512Gemm>(b, rs, cs, kc, cols, dst);
}
FINLORA_AVX512_FN bool pack_b_bf16(const uint16_t* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  return x86::pack_b<Avx512Gemm>(b, rs, cs, kc, cols, dst);
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
const MicroKernel kKernel{"avx512 14x32", MR, NR, 280, 512, 4096, x86::micro_kernel<Tiles, MR, 16>, pack_a, pack_b_f32,
                          pack_b_bf16, narrow};

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
