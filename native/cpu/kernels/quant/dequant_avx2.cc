// AVX2 + FMA dequantization routines (quant.h). The 16-entry NF4 table does not fit
// one 8-lane permute, so each lookup permutes both halves of the (block-scaled) table
// and picks by bit 3 of the index, moved into the sign bit for blendv. Compiled with a
// target attribute; used only when finlora::isa() allows.
#include "quant.h"

#if defined(__x86_64__)
#include <algorithm>
#include <cstring>

#include "x86.h"

namespace finlora {
namespace quant {
namespace {

// 4 packed bytes -> the 8 nibble indices in element order (high nibble first).
FINLORA_AVX2_TARGET inline __m256i nibbles8(const uint8_t* p) {
  int32_t word;
  std::memcpy(&word, p, 4);
  const __m128i w = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(word));
  const __m128i hi = _mm_srli_epi16(w, 4);
  const __m128i lo = _mm_and_si128(w, _mm_set1_epi16(15));
  return _mm256_cvtepu8_epi32(_mm_or_si128(hi, _mm_slli_epi16(lo, 8)));
}

FINLORA_AVX2_TARGET void nf4_run(const QWeight& w, int64_t f, int64_t n, float s, float* out) {
  if (f & 1) {
    *out++ = w.code[w.nibble(f)] * s;
    ++f;
    --n;
  }
  const uint8_t* p = w.packed + (f >> 1);
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 lut_lo = _mm256_mul_ps(_mm256_loadu_ps(w.code), vs);
  const __m256 lut_hi = _mm256_mul_ps(_mm256_loadu_ps(w.code + 8), vs);
  for (; n >= 8; n -= 8, p += 4, out += 8) {
    const __m256i idx = nibbles8(p);
    const __m256 lo = _mm256_permutevar8x32_ps(lut_lo, idx);
    const __m256 hi = _mm256_permutevar8x32_ps(lut_hi, idx);
    _mm256_storeu_ps(out, _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = p[i >> 1];
    out[i] = w.code[(i & 1) ? (byte & 15) : (byte >> 4)] * s;
  }
}

FINLORA_AVX2_TARGET void dequant_row(const QWeight& w, int64_t r, int64_t c0, int64_t len, float* out) {
  if (w.format == kInt8) {
    const int8_t* q = w.cb + r * w.cols + c0;
    const float s = w.row_scale(r);
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), vs));
    }
    for (; i < len; ++i) out[i] = static_cast<float>(q[i]) * s;
    return;
  }
  for_each_block_run(w, r, c0, len, out, [&](int64_t f, int64_t n, float s, float* o) { nf4_run(w, f, n, s, o); });
}

FINLORA_AVX2_FN void pack_transposed(const QWeight& w, int64_t r0, int rows, int64_t c0, int64_t len, int nr, float* dst,
                                     float* scratch) {
  if (nr % 8 != 0) return pack_transposed_scalar(w, r0, rows, c0, len, nr, dst, scratch);
  x86::pack_transposed_from_rows<simd::Avx2Regs>(w, r0, rows, c0, len, nr, dst, scratch, dequant_row);
}

FINLORA_AVX2_TARGET inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

FINLORA_AVX2_TARGET void dot4(const float* a, int64_t lda, int64_t M, const float* const w[4], int64_t len, float* acc) {
  for (int64_t m = 0; m < M; ++m) {
    const float* x = a + m * lda;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      s0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w[0] + i), s0);
      s1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w[1] + i), s1);
      s2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w[2] + i), s2);
      s3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w[3] + i), s3);
    }
    float t0 = hsum(s0), t1 = hsum(s1), t2 = hsum(s2), t3 = hsum(s3);
    for (; i < len; ++i) {
      t0 += x[i] * w[0][i];
      t1 += x[i] * w[1][i];
      t2 += x[i] * w[2][i];
      t3 += x[i] * w[3][i];
    }
    acc[m * 4 + 0] += t0;
    acc[m * 4 + 1] += t1;
    acc[m * 4 + 2] += t2;
    acc[m * 4 + 3] += t3;
  }
}

FINLORA_AVX2_TARGET void axpy4(const float* coef, int64_t M, const float* const w[4], int64_t len, float* out, int64_t ldo) {
  for (int64_t m = 0; m < M; ++m) {
    const float a0 = coef[m * 4], a1 = coef[m * 4 + 1], a2 = coef[m * 4 + 2], a3 = coef[m * 4 + 3];
    const __m256 c0 = _mm256_set1_ps(a0), c1 = _mm256_set1_ps(a1), c2 = _mm256_set1_ps(a2), c3 = _mm256_set1_ps(a3);
    float* o = out + m * ldo;
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
      __m256 v = _mm256_loadu_ps(o + i);
      v = _mm256_fmadd_ps(c0, _mm256_loadu_ps(w[0] + i), v);
      v = _mm256_fmadd_ps(c1, _mm256_loadu_ps(w[1] + i), v);
      v = _mm256_fmadd_ps(c2, _mm256_loadu_ps(w[2] + i), v);
      v = _mm256_fmadd_ps(c3, _mm256_loadu_ps(w[3] + i), v);
      _mm256_storeu_ps(o + i, v);
    }
    for (; i < len; ++i) o[i] += a0 * w[0][i] + a1 * w[1][i] + a2 * w[2][i] + a3 * w[3][i];
  }
}

const QuantIsa kAvx2{"avx2", dequant_row, pack_transposed, pack_rows_scalar, dot4, axpy4};

}  // namespace

const QuantIsa* avx2_quant() { return &kAvx2; }

}  // namespace quant
}  // namespace finlora

#else

namespace finlora {
namespace quant {
const QuantIsa* avx2_quant() { return nullptr; }
}  // namespace quant
}  // namespace finlora

#endif
