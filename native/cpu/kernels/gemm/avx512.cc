// AVX-512 GEMM micro-kernel: a 14 x 32 tile of C held in 28 zmm accumulators, one
// broadcast of A and two 16-float vectors of B per k step (28 FMAs). Smaller corners
// (fewer rows, or at most 16 columns) get their own unrolled instances so skinny
// shapes do not pay for padding rows. Compiled for AVX-512 with a target attribute
// so the addon still builds for baseline x86-64; matmul.cc only calls it when
// finlora::isa() says the CPU has it. Layouts and the C update rule: gemm.h.
#include "gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define FINLORA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace finlora {
namespace gemm {
namespace {

constexpr int MR = 14;
constexpr int NR = 32;

template <int R, int NV>
FINLORA_AVX512 void tile(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
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
FINLORA_AVX512 void dispatch_rows(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows,
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

FINLORA_AVX512 void run(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols,
                        float alpha, bool add) {
  if (cols > 16) dispatch_rows<2>(kc, a, b, c, ldc, rows, cols, alpha, add);
  else dispatch_rows<1>(kc, a, b, c, ldc, rows, cols, alpha, add);
}

const MicroKernel kKernel{"avx512 14x32", MR, NR, 280, 256, 4096, run};

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
