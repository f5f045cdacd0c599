// AVX-512 versions of the load-time quantizers in kernels/quantize.cc, bit for bit the
// same codes (the numerics are stated there): f16 rounding by vcvtps2ph (round to
// nearest even, as the portable conversion), int8 rounding by vcvtps2dq under the
// default round-to-nearest-even mode, and the NF4 bucketize as a count of the
// midpoints below each value (the code is sorted, so the count is the bucket).
// Used only when finlora::isa() allows; each returns false for a case it leaves to
// the portable loop.
#include "quant.h"

#if defined(__x86_64__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "simd_x86.h"

#define FINLORA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))

namespace finlora {
namespace quant {
namespace {

using simd::first_lanes16;

// 16 values (the first n) of a f32 / bf16 / f16 array at element i, as f32.
FINLORA_AVX512 inline __m512 load16(const void* p, int64_t dtype, int64_t i, __mmask16 m) {
  if (dtype == F32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
  if (dtype == BF16) return simd::load_bf16x16(static_cast<const uint16_t*>(p) + i, m);
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i));
}

}  // namespace

FINLORA_AVX512 bool quantize_int8_row_avx512(const void* w, int64_t dtype, int64_t offset, int64_t cols, int8_t* q,
                                             float* absmax_out, float* tmp) {
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 m = first_lanes16(cols - c);
    const __m512 x = load16(w, dtype, offset + c, m);
    const __m512 h = _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm512_mask_storeu_ps(tmp + c, m, h);
    vmax = _mm512_mask_max_ps(vmax, m, _mm512_abs_ps(h), vmax);  // a NaN is skipped, as std::max does
  }
  const float absmax = _mm512_reduce_max_ps(vmax);
  *absmax_out = absmax;
  if (absmax == 0.0f) {
    for (int64_t c = 0; c < cols; ++c) q[c] = 0;
    return true;
  }
  const __m512 scale = _mm512_set1_ps(127.0f / absmax);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 m = first_lanes16(cols - c);
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, tmp + c), scale));
    _mm512_mask_cvtsepi32_storeu_epi8(q + c, m, _mm512_min_epi32(_mm512_max_epi32(v, lo), hi));
  }
  return true;
}

FINLORA_AVX512 bool quantize_block4_avx512(const void* x, int64_t dtype, int64_t start, int64_t bs, const float* bounds,
                                           uint8_t* packed, float* absmax_out) {
  if (bs % 16 != 0 || start % 16 != 0) return false;
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t i = 0; i < bs; i += 16) vmax = _mm512_max_ps(_mm512_abs_ps(load16(x, dtype, start + i, 0xffff)), vmax);
  const float am = _mm512_reduce_max_ps(vmax);
  *absmax_out = am;
  const __m512 inv = _mm512_set1_ps(1.0f / (am > 1e-38f ? am : 1e-38f));
  __m512 b[15];
  for (int k = 0; k < 15; ++k) b[k] = _mm512_set1_ps(bounds[k]);
  const __m512 minus1 = _mm512_set1_ps(-1.0f), plus1 = _mm512_set1_ps(1.0f);
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t i = 0; i < bs; i += 16) {
    // max(s, -1) returns -1 for a NaN, as std::max(-1, s) does in the portable loop
    const __m512 s = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(load16(x, dtype, start + i, 0xffff), inv), minus1), plus1);
    __m512i idx = _mm512_setzero_si512();
    for (int k = 0; k < 15; ++k) idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(b[k], s, _CMP_LT_OQ), idx, one);
    // 16 indices -> 8 bytes, element 2j in the high nibble of byte j
    const __m128i bytes = _mm512_cvtepi32_epi8(idx);
    const __m128i pairs = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0xff)), 4), _mm_srli_epi16(bytes, 8));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(packed + ((start + i) >> 1)), _mm_packus_epi16(pairs, pairs));
  }
  return true;
}

}  // namespace quant
}  // namespace finlora

#else

namespace finlora {
namespace quant {
bool quantize_int8_row_avx512(const void*, int64_t, int64_t, int64_t, int8_t*, float*, float*) { return false; }
bool quantize_block4_avx512(const void*, int64_t, int64_t, int64_t, const float*, uint8_t*, float*) { return false; }
}  // namespace quant
}  // namespace finlora

#endif
