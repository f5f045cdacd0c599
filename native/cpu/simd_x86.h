// Register-level pieces that the hand-written AVX2 and AVX-512 kernels (the GEMM
// micro-kernels and packers in kernels/gemm/, the dequantizers and quantizers in
// kernels/quant/) share: lane masks for the first n elements, bf16 widening and the
// in-register transposes that lay rows of a matrix across a packed panel. Each is
// marked with its target (simd_math.h's attributes) and always inlined into the
// target-specific function that calls it. Avx2Regs / Avx512Regs add the zero vector
// and the transpose to simd_math.h's traits.
#pragma once
#include "simd_math.h"

#if defined(__x86_64__)
#include <cstdint>

#define FINLORA_X86_INLINE inline __attribute__((always_inline))

namespace finlora {
namespace simd {

// The first min(n, 16) of 16 lanes.
FINLORA_X86_INLINE __mmask16 first_lanes16(int64_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1u);
}

// The first min(n, 8) of 8 lanes, as a maskload / maskstore mask.
FINLORA_AVX2_TARGET FINLORA_X86_INLINE __m256i first_lanes8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 16 bf16 values (the lanes of m; the others 0) as f32: bf16 is f32's top half.
FINLORA_AVX512_TARGET FINLORA_X86_INLINE __m512 load_bf16x16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// 8 x 8 transpose in registers: r[i] (row i) becomes column i.
FINLORA_AVX2_TARGET FINLORA_X86_INLINE void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + q] holds, in 128-bit lane L, column 4L + q of rows 4g .. 4g + 3.
  for (int g = 0; g < 2; ++g) {
    u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int q = 0; q < 4; ++q) {
    r[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
    r[4 + q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
  }
}

// 16 x 16 transpose in registers: r[i] (row i) becomes column i. Pairs of rows
// interleave, then pairs of pairs leave each 128-bit lane holding four rows of one
// column; two rounds of lane shuffles finish the 4 x 4 transpose of lanes.
FINLORA_AVX512_TARGET FINLORA_X86_INLINE void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + q] holds, in 128-bit lane L, column 4L + q of rows 4g .. 4g + 3.
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int q = 0; q < 4; ++q) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xee);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xee);
    r[q] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[4 + q] = _mm512_shuffle_f32x4(v0, w0, 0xdd);
    r[8 + q] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[12 + q] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
  }
}

// simd_math.h's traits with a zero vector and the square transpose, for kernels written
// once over the vector width (gemm/x86.h, quant/x86.h).
struct Avx2Regs : Avx2 {
  FINLORA_AVX2_TARGET static inline F zero() { return _mm256_setzero_ps(); }
  FINLORA_AVX2_TARGET static inline void transpose(F r[8]) { transpose8(r); }
};
struct Avx512Regs : Avx512 {
  FINLORA_AVX512_TARGET static inline F zero() { return _mm512_setzero_ps(); }
  FINLORA_AVX512_TARGET static inline void transpose(F r[16]) { transpose16(r); }
};

}  // namespace simd
}  // namespace finlora

#endif  // __x86_64__
