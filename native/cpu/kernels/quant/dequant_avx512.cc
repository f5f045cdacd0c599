// AVX-512 dequantization routines (quant.h). NF4 decoding uses the 16-entry code table
// as one zmm register: vpermps with 16 indices is exactly a 16-way table lookup, and
// scaling the table once per block (code * absmax) saves a multiply per value.
// Compiled with a target attribute; used only when finlora::isa() allows.
#include "quant.h"

#include <algorithm>

#if defined(__x86_64__)
// GCC 12's AVX-512 headers start conversions and reductions from _mm512_undefined_*(),
// which -Wmaybe-uninitialized reports as a use of an uninitialised value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "x86.h"

namespace finlora {
namespace quant {
namespace {

using simd::transpose16;
using simd::first_lanes16;

// 8 packed bytes -> the 16 nibble indices in element order (high nibble first).
FINLORA_AVX512_TARGET inline __m512i nibbles16(const uint8_t* p) {
  const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i hi = _mm_srli_epi16(w, 4);
  const __m128i lo = _mm_and_si128(w, _mm_set1_epi16(15));
  return _mm512_cvtepu8_epi32(_mm_or_si128(hi, _mm_slli_epi16(lo, 8)));
}

FINLORA_AVX512_TARGET void nf4_run(const QWeight& w, int64_t f, int64_t n, float s, float* out) {
  if (f & 1) {
    *out++ = w.code[w.nibble(f)] * s;
    ++f;
    --n;
  }
  const uint8_t* p = w.packed + (f >> 1);
  const __m512 lut = _mm512_mul_ps(_mm512_loadu_ps(w.code), _mm512_set1_ps(s));
  for (; n >= 16; n -= 16, p += 8, out += 16) _mm512_storeu_ps(out, _mm512_permutexvar_ps(nibbles16(p), lut));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = p[i >> 1];
    out[i] = w.code[(i & 1) ? (byte & 15) : (byte >> 4)] * s;
  }
}

FINLORA_AVX512_TARGET void dequant_row(const QWeight& w, int64_t r, int64_t c0, int64_t len, float* out) {
  if (w.format == kInt8) {
    const int8_t* q = w.cb + r * w.cols + c0;
    const __m512 vs = _mm512_set1_ps(w.row_scale(r));
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i));
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), vs));
    }
    if (i < len) {
      const __mmask16 m = first_lanes16(len - i);
      const __m128i b = _mm_maskz_loadu_epi8(m, q + i);
      _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), vs));
    }
    return;
  }
  for_each_block_run(w, r, c0, len, out, [&](int64_t f, int64_t n, float s, float* o) { nf4_run(w, f, n, s, o); });
}

// The NF4 values at flat indices f .. f+15 (the first popcount(m) of them), f even and
// all 16 inside one block: one masked load of the bytes, one table lookup.
FINLORA_AVX512_TARGET inline __m512 nf4_16(const QWeight& w, int64_t f, __mmask16 m, __m512 lut) {
  const __m512 lut_s = _mm512_mul_ps(lut, _mm512_set1_ps(w.block_scale(f / w.blocksize)));
  const __mmask16 bytes = static_cast<__mmask16>((1u << ((_mm_popcnt_u32(m) + 1) / 2)) - 1u);
  const __m128i wide = _mm_cvtepu8_epi16(_mm_maskz_loadu_epi8(bytes, w.packed + (f >> 1)));
  const __m128i hi = _mm_srli_epi16(wide, 4);
  const __m128i lo = _mm_and_si128(wide, _mm_set1_epi16(15));
  return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_or_si128(hi, _mm_slli_epi16(lo, 8))), lut_s);
}

// Decodes 16 values of each of `live` rows (the rest zero) straight into registers:
// int8 converted (scaled after the transpose, one row scale per lane), NF4 looked up in
// the table scaled by each row's block absmax. NF4 needs the 16 values inside one
// block and byte-aligned, which holds when cols, c0, k0 and the block size are all
// multiples of 16; the caller checks.
FINLORA_AVX512_TARGET inline void load_rows16(const QWeight& w, int64_t r, int live, int64_t col, __mmask16 m, __m512 lut,
                                              __m512 r16[16]) {
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    if (i >= live) {
      r16[i] = zero;
    } else if (w.format == kInt8) {
      const __m128i b = _mm_maskz_loadu_epi8(m, w.cb + (r + i) * w.cols + col);
      r16[i] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    } else {
      r16[i] = nf4_16(w, (r + i) * w.cols + col, m, lut);
    }
  }
}

FINLORA_AVX512_FN void pack_transposed(const QWeight& w, int64_t r0, int rows, int64_t c0, int64_t len, int nr, float* dst,
                                       float* scratch) {
  if (nr % 16 != 0) return pack_transposed_scalar(w, r0, rows, c0, len, nr, dst, scratch);
  const bool direct = w.format == kInt8 || (w.cols % 16 == 0 && c0 % 16 == 0 && w.blocksize % 16 == 0);
  if (direct) {
    const __m512 lut = w.format == kNf4 ? _mm512_loadu_ps(w.code) : _mm512_setzero_ps();
    for (int jg = 0; jg < nr; jg += 16) {
      const int live = std::min(16, std::max(0, rows - jg));
      alignas(64) float sc[16] = {};
      if (w.format == kInt8)
        for (int i = 0; i < live; ++i) sc[i] = w.row_scale(r0 + jg + i);
      const __m512 vs = _mm512_load_ps(sc);
      for (int64_t k0 = 0; k0 < len; k0 += 16) {
        const int64_t kn = std::min<int64_t>(16, len - k0);
        __m512 r[16];
        load_rows16(w, r0 + jg, live, c0 + k0, first_lanes16(kn), lut, r);
        if (live > 0) transpose16(r);
        for (int64_t t = 0; t < kn; ++t) {
          const __m512 v = w.format == kInt8 ? _mm512_mul_ps(r[t], vs) : r[t];
          _mm512_storeu_ps(dst + (k0 + t) * nr + jg, v);
        }
      }
    }
    return;
  }
  x86::pack_transposed_from_rows<simd::Avx512Regs>(w, r0, rows, c0, len, nr, dst, scratch, dequant_row);
}

FINLORA_AVX512_TARGET void pack_rows(const QWeight& w, int64_t r0, int64_t kc, int64_t c0, int cols, int nr, float* dst) {
  const __m512 zero = _mm512_setzero_ps();
  if (w.format == kNf4) {
    if (nr % 16 != 0 || w.cols % 16 != 0 || c0 % 16 != 0 || w.blocksize % 16 != 0) return pack_rows_scalar(w, r0, kc, c0, cols, nr, dst);
    const __m512 lut = _mm512_loadu_ps(w.code);
    for (int64_t k = 0; k < kc; ++k) {
      float* d = dst + k * nr;
      for (int j = 0; j < nr; j += 16) {
        const __mmask16 m = j < cols ? first_lanes16(cols - j) : 0;
        _mm512_storeu_ps(d + j, m == 0 ? zero : _mm512_maskz_mov_ps(m, nf4_16(w, (r0 + k) * w.cols + c0 + j, m, lut)));
      }
    }
    return;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const int8_t* q = w.cb + (r0 + k) * w.cols + c0;
    const __m512 vs = _mm512_set1_ps(w.row_scale(r0 + k));
    float* d = dst + k * nr;
    for (int j = 0; j < nr; j += 16) {
      if (j >= cols) {
        _mm512_storeu_ps(d + j, zero);
        continue;
      }
      const __m128i b = _mm_maskz_loadu_epi8(first_lanes16(cols - j), q + j);
      _mm512_storeu_ps(d + j, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), vs));
    }
  }
}

FINLORA_AVX512_TARGET void dot4(const float* a, int64_t lda, int64_t M, const float* const w[4], int64_t len, float* acc) {
  for (int64_t m = 0; m < M; ++m) {
    const float* x = a + m * lda;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m512 v = _mm512_loadu_ps(x + i);
      s0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(w[0] + i), s0);
      s1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(w[1] + i), s1);
      s2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(w[2] + i), s2);
      s3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(w[3] + i), s3);
    }
    if (i < len) {
      const __mmask16 k = first_lanes16(len - i);
      const __m512 v = _mm512_maskz_loadu_ps(k, x + i);
      s0 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, w[0] + i), s0);
      s1 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, w[1] + i), s1);
      s2 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, w[2] + i), s2);
      s3 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, w[3] + i), s3);
    }
    acc[m * 4 + 0] += _mm512_reduce_add_ps(s0);
    acc[m * 4 + 1] += _mm512_reduce_add_ps(s1);
    acc[m * 4 + 2] += _mm512_reduce_add_ps(s2);
    acc[m * 4 + 3] += _mm512_reduce_add_ps(s3);
  }
}

FINLORA_AVX512_TARGET void axpy4(const float* coef, int64_t M, const float* const w[4], int64_t len, float* out, int64_t ldo) {
  for (int64_t m = 0; m < M; ++m) {
    const __m512 c0 = _mm512_set1_ps(coef[m * 4]), c1 = _mm512_set1_ps(coef[m * 4 + 1]);
    const __m512 c2 = _mm512_set1_ps(coef[m * 4 + 2]), c3 = _mm512_set1_ps(coef[m * 4 + 3]);
    float* o = out + m * ldo;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      __m512 v = _mm512_loadu_ps(o + i);
      v = _mm512_fmadd_ps(c0, _mm512_loadu_ps(w[0] + i), v);
      v = _mm512_fmadd_ps(c1, _mm512_loadu_ps(w[1] + i), v);
      v = _mm512_fmadd_ps(c2, _mm512_loadu_ps(w[2] + i), v);
      v = _mm512_fmadd_ps(c3, _mm512_loadu_ps(w[3] + i), v);
      _mm512_storeu_ps(o + i, v);
    }
    if (i < len) {
      const __mmask16 k = first_lanes16(len - i);
      __m512 v = _mm512_maskz_loadu_ps(k, o + i);
      v = _mm512_fmadd_ps(c0, _mm512_maskz_loadu_ps(k, w[0] + i), v);
      v = _mm512_fmadd_ps(c1, _mm512_maskz_loadu_ps(k, w[1] + i), v);
      v = _mm512_fmadd_ps(c2, _mm512_maskz_loadu_ps(k, w[2] + i), v);
      v = _mm512_fmadd_ps(c3, _mm512_maskz_loadu_ps(k, w[3] + i), v);
      _mm512_mask_storeu_ps(o + i, k, v);
    }
  }
}

const QuantIsa kAvx512{"avx512", dequant_row, pack_transposed, pack_rows, dot4, axpy4};

}  // namespace

const QuantIsa* avx512_quant() { return &kAvx512; }

}  // namespace quant
}  // namespace finlora

#else

namespace finlora {
namespace quant {
const QuantIsa* avx512_quant() { return nullptr; }
}  // namespace quant
}  // namespace finlora

#endif
