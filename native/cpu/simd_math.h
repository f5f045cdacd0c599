// f32 vector maths for the CPU kernels: exp, log and sigmoid on AVX2+FMA (8 lanes)
// and AVX-512 (16 lanes). One algorithm is written once over an ISA traits struct
// (Avx2, Avx512), so both widths give bit-identical results; kernels pick a width at
// run time from finlora::isa() and keep a scalar libm path for the baseline.
//
// How to use from a kernel: write a template over V, call only V:: members and the
// functions below, and instantiate it from a non-template entry point marked
// FINLORA_AVX2_FN or FINLORA_AVX512_FN. Those carry `flatten`, which inlines the whole
// call tree into the target-specific entry (plain always_inline cannot cross from a
// generic template into a target-specific intrinsic). Vector arguments are passed by
// const reference so that no function outside a target region has a vector ABI.
//
// Accuracy (checked over every f32, or every third, against f64 libm when written):
// exp 0.94 ulp, log 0.83 ulp, sigmoid 1.5 ulp; all handle NaN, ±inf, ±0, subnormal
// inputs and results.
#pragma once

#if defined(__x86_64__)
// GCC 12 reports the deliberately undefined pass-through operand inside its own
// AVX-512 intrinsics as (maybe-)uninitialized once they are inlined through
// `flatten` (GCC bug 105593); the state below applies at the intrinsics' source lines.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>

// Vector values cross only inlined calls inside target regions (see above).
#pragma GCC diagnostic ignored "-Wpsabi"

#define FINLORA_AVX2_TARGET __attribute__((target("avx2,fma")))
#define FINLORA_AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define FINLORA_AVX2_FN FINLORA_AVX2_TARGET __attribute__((flatten))
#define FINLORA_AVX512_FN FINLORA_AVX512_TARGET __attribute__((flatten))

namespace finlora {
namespace simd {

struct Avx2 {
  using F = __m256;
  using I = __m256i;
  using M = __m256;  // comparison results are all-ones lanes
  using D = __m256d;
  static constexpr int W = 8;
  FINLORA_AVX2_TARGET static inline F load(const float* p) { return _mm256_loadu_ps(p); }
  FINLORA_AVX2_TARGET static inline void store(float* p, const F& v) { _mm256_storeu_ps(p, v); }
  FINLORA_AVX2_TARGET static inline F set1(float v) { return _mm256_set1_ps(v); }
  FINLORA_AVX2_TARGET static inline F add(const F& a, const F& b) { return _mm256_add_ps(a, b); }
  FINLORA_AVX2_TARGET static inline F sub(const F& a, const F& b) { return _mm256_sub_ps(a, b); }
  FINLORA_AVX2_TARGET static inline F mul(const F& a, const F& b) { return _mm256_mul_ps(a, b); }
  FINLORA_AVX2_TARGET static inline F div(const F& a, const F& b) { return _mm256_div_ps(a, b); }
  // a*b + c and c - a*b, one rounding each
  FINLORA_AVX2_TARGET static inline F fma(const F& a, const F& b, const F& c) { return _mm256_fmadd_ps(a, b, c); }
  FINLORA_AVX2_TARGET static inline F fnma(const F& a, const F& b, const F& c) { return _mm256_fnmadd_ps(a, b, c); }
  // NOTE: x86 max/min return the second operand when either is NaN.
  FINLORA_AVX2_TARGET static inline F max(const F& a, const F& b) { return _mm256_max_ps(a, b); }
  FINLORA_AVX2_TARGET static inline F min(const F& a, const F& b) { return _mm256_min_ps(a, b); }
  FINLORA_AVX2_TARGET static inline F sqrt(const F& a) { return _mm256_sqrt_ps(a); }
  FINLORA_AVX2_TARGET static inline F abs(const F& a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  FINLORA_AVX2_TARGET static inline F neg(const F& a) { return _mm256_xor_ps(_mm256_set1_ps(-0.0f), a); }
  FINLORA_AVX2_TARGET static inline F round(const F& a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  FINLORA_AVX2_TARGET static inline M lt(const F& a, const F& b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  FINLORA_AVX2_TARGET static inline M ge(const F& a, const F& b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  FINLORA_AVX2_TARGET static inline M eq(const F& a, const F& b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  FINLORA_AVX2_TARGET static inline M isnan(const F& a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  FINLORA_AVX2_TARGET static inline M or_(const M& a, const M& b) { return _mm256_or_ps(a, b); }
  // m ? a : b
  FINLORA_AVX2_TARGET static inline F select(const M& m, const F& a, const F& b) { return _mm256_blendv_ps(b, a, m); }
  FINLORA_AVX2_TARGET static inline I to_int(const F& a) { return _mm256_cvtps_epi32(a); }
  FINLORA_AVX2_TARGET static inline F to_float(const I& a) { return _mm256_cvtepi32_ps(a); }
  FINLORA_AVX2_TARGET static inline I bits(const F& a) { return _mm256_castps_si256(a); }
  FINLORA_AVX2_TARGET static inline F from_bits(const I& a) { return _mm256_castsi256_ps(a); }
  FINLORA_AVX2_TARGET static inline I iset1(int32_t v) { return _mm256_set1_epi32(v); }
  FINLORA_AVX2_TARGET static inline I iadd(const I& a, const I& b) { return _mm256_add_epi32(a, b); }
  FINLORA_AVX2_TARGET static inline I isub(const I& a, const I& b) { return _mm256_sub_epi32(a, b); }
  FINLORA_AVX2_TARGET static inline I iand(const I& a, const I& b) { return _mm256_and_si256(a, b); }
  FINLORA_AVX2_TARGET static inline I sra(const I& a, int n) { return _mm256_srai_epi32(a, n); }
  FINLORA_AVX2_TARGET static inline I sll(const I& a, int n) { return _mm256_slli_epi32(a, n); }
  FINLORA_AVX2_TARGET static inline float hmax(const F& a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  // f64 helpers: a vector of W floats widens into two D halves.
  FINLORA_AVX2_TARGET static inline D dzero() { return _mm256_setzero_pd(); }
  FINLORA_AVX2_TARGET static inline D dset1(double v) { return _mm256_set1_pd(v); }
  FINLORA_AVX2_TARGET static inline D widen_lo(const F& a) { return _mm256_cvtps_pd(_mm256_castps256_ps128(a)); }
  FINLORA_AVX2_TARGET static inline D widen_hi(const F& a) { return _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)); }
  FINLORA_AVX2_TARGET static inline F narrow(const D& lo, const D& hi) {
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
  }
  FINLORA_AVX2_TARGET static inline D dload(const double* p) { return _mm256_loadu_pd(p); }
  FINLORA_AVX2_TARGET static inline void dstore(double* p, const D& v) { _mm256_storeu_pd(p, v); }
  FINLORA_AVX2_TARGET static inline D dadd(const D& a, const D& b) { return _mm256_add_pd(a, b); }
  FINLORA_AVX2_TARGET static inline D dsub(const D& a, const D& b) { return _mm256_sub_pd(a, b); }
  FINLORA_AVX2_TARGET static inline double dsum(const D& a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

struct Avx512 {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  using D = __m512d;
  static constexpr int W = 16;
  FINLORA_AVX512_TARGET static inline F load(const float* p) { return _mm512_loadu_ps(p); }
  FINLORA_AVX512_TARGET static inline void store(float* p, const F& v) { _mm512_storeu_ps(p, v); }
  FINLORA_AVX512_TARGET static inline F set1(float v) { return _mm512_set1_ps(v); }
  FINLORA_AVX512_TARGET static inline F add(const F& a, const F& b) { return _mm512_add_ps(a, b); }
  FINLORA_AVX512_TARGET static inline F sub(const F& a, const F& b) { return _mm512_sub_ps(a, b); }
  FINLORA_AVX512_TARGET static inline F mul(const F& a, const F& b) { return _mm512_mul_ps(a, b); }
  FINLORA_AVX512_TARGET static inline F div(const F& a, const F& b) { return _mm512_div_ps(a, b); }
  FINLORA_AVX512_TARGET static inline F fma(const F& a, const F& b, const F& c) { return _mm512_fmadd_ps(a, b, c); }
  FINLORA_AVX512_TARGET static inline F fnma(const F& a, const F& b, const F& c) { return _mm512_fnmadd_ps(a, b, c); }
  FINLORA_AVX512_TARGET static inline F max(const F& a, const F& b) { return _mm512_max_ps(a, b); }
  FINLORA_AVX512_TARGET static inline F min(const F& a, const F& b) { return _mm512_min_ps(a, b); }
  FINLORA_AVX512_TARGET static inline F sqrt(const F& a) { return _mm512_sqrt_ps(a); }
  FINLORA_AVX512_TARGET static inline F abs(const F& a) { return _mm512_abs_ps(a); }
  FINLORA_AVX512_TARGET static inline F neg(const F& a) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN)));
  }
  FINLORA_AVX512_TARGET static inline F round(const F& a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  FINLORA_AVX512_TARGET static inline M lt(const F& a, const F& b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  FINLORA_AVX512_TARGET static inline M ge(const F& a, const F& b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  FINLORA_AVX512_TARGET static inline M eq(const F& a, const F& b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  FINLORA_AVX512_TARGET static inline M isnan(const F& a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  FINLORA_AVX512_TARGET static inline M or_(const M& a, const M& b) { return static_cast<M>(a | b); }
  FINLORA_AVX512_TARGET static inline F select(const M& m, const F& a, const F& b) { return _mm512_mask_blend_ps(m, b, a); }
  FINLORA_AVX512_TARGET static inline I to_int(const F& a) { return _mm512_cvtps_epi32(a); }
  FINLORA_AVX512_TARGET static inline F to_float(const I& a) { return _mm512_cvtepi32_ps(a); }
  FINLORA_AVX512_TARGET static inline I bits(const F& a) { return _mm512_castps_si512(a); }
  FINLORA_AVX512_TARGET static inline F from_bits(const I& a) { return _mm512_castsi512_ps(a); }
  FINLORA_AVX512_TARGET static inline I iset1(int32_t v) { return _mm512_set1_epi32(v); }
  FINLORA_AVX512_TARGET static inline I iadd(const I& a, const I& b) { return _mm512_add_epi32(a, b); }
  FINLORA_AVX512_TARGET static inline I isub(const I& a, const I& b) { return _mm512_sub_epi32(a, b); }
  FINLORA_AVX512_TARGET static inline I iand(const I& a, const I& b) { return _mm512_and_si512(a, b); }
  FINLORA_AVX512_TARGET static inline I sra(const I& a, int n) { return _mm512_srai_epi32(a, static_cast<unsigned>(n)); }
  FINLORA_AVX512_TARGET static inline I sll(const I& a, int n) { return _mm512_slli_epi32(a, static_cast<unsigned>(n)); }
  FINLORA_AVX512_TARGET static inline float hmax(const F& a) { return _mm512_reduce_max_ps(a); }
  FINLORA_AVX512_TARGET static inline D dzero() { return _mm512_setzero_pd(); }
  FINLORA_AVX512_TARGET static inline D dset1(double v) { return _mm512_set1_pd(v); }
  FINLORA_AVX512_TARGET static inline D widen_lo(const F& a) { return _mm512_cvtps_pd(_mm512_castps512_ps256(a)); }
  FINLORA_AVX512_TARGET static inline D widen_hi(const F& a) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1)); }
  FINLORA_AVX512_TARGET static inline F narrow(const D& lo, const D& hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
  }
  FINLORA_AVX512_TARGET static inline D dload(const double* p) { return _mm512_loadu_pd(p); }
  FINLORA_AVX512_TARGET static inline void dstore(double* p, const D& v) { _mm512_storeu_pd(p, v); }
  FINLORA_AVX512_TARGET static inline D dadd(const D& a, const D& b) { return _mm512_add_pd(a, b); }
  FINLORA_AVX512_TARGET static inline D dsub(const D& a, const D& b) { return _mm512_sub_pd(a, b); }
  FINLORA_AVX512_TARGET static inline double dsum(const D& a) { return _mm512_reduce_add_pd(a); }
};

// exp(x): x = n·ln2 + r with |r| <= ln2/2, e^r by its Taylor series to degree 7
// (truncation below 0.1 ulp there), then scaled by 2^n as 2^(n/2)·2^(n-n/2) so that
// results in the subnormal range round once and large x overflows to inf. The first
// Cody-Waite step x - n·c1 is exact under FMA (c1 = ln2 rounded to f32; the
// difference is a multiple of 2^-25 below 1).
template <class V>
inline typename V::F exp(const typename V::F& x) {
  using F = typename V::F;
  using I = typename V::I;
  // Outside [-104, 89] the result is 0 or inf; clamping keeps n within int range.
  const F xc = V::min(V::max(x, V::set1(-104.0f)), V::set1(89.0f));
  const F n = V::round(V::mul(xc, V::set1(1.44269504088896341f)));
  F r = V::fnma(n, V::set1(0.693147182464599609375f), xc);
  r = V::fnma(n, V::set1(-1.904654323148236e-09f), r);
  F p = V::set1(1.0f / 5040.0f);
  p = V::fma(p, r, V::set1(1.0f / 720.0f));
  p = V::fma(p, r, V::set1(1.0f / 120.0f));
  p = V::fma(p, r, V::set1(1.0f / 24.0f));
  p = V::fma(p, r, V::set1(1.0f / 6.0f));
  p = V::fma(p, r, V::set1(0.5f));
  p = V::fma(p, r, V::set1(1.0f));
  p = V::fma(p, r, V::set1(1.0f));
  const I ni = V::to_int(n);
  const I h = V::sra(ni, 1);
  const F s1 = V::from_bits(V::sll(V::iadd(h, V::iset1(127)), 23));
  const F s2 = V::from_bits(V::sll(V::iadd(V::isub(ni, h), V::iset1(127)), 23));
  const F y = V::mul(V::mul(p, s1), s2);
  return V::select(V::isnan(x), x, y);
}

// log(x): x = 2^e·m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), and
// log(1+f) = 2·atanh(s), s = f/(2+f), written as f - f²/2 + s·(f²/2 + R) so the
// large part f is exact and only small corrections round (the classic fdlibm
// arrangement); R is the atanh series in z = s² (|z| < 0.03) to z^5, with its
// Taylor coefficients 2/3, 2/5, ...; e·ln2 is added in two FMA parts.
template <class V>
inline typename V::F log(const typename V::F& x) {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  // Subnormal inputs: scale by 2^23 first so the exponent field is meaningful.
  const M tiny = V::lt(x, V::set1(1.17549435e-38f));
  const F xs = V::select(tiny, V::mul(x, V::set1(8388608.0f)), x);
  const F ebias = V::select(tiny, V::set1(-23.0f), V::set1(0.0f));
  const I d = V::isub(V::bits(xs), V::iset1(0x3f3504f3));  // bits of sqrt(1/2)
  const F e = V::add(V::to_float(V::sra(d, 23)), ebias);
  const F m = V::from_bits(V::iadd(V::iand(d, V::iset1(0x007fffff)), V::iset1(0x3f3504f3)));
  const F f = V::sub(m, V::set1(1.0f));
  const F s = V::div(f, V::add(f, V::set1(2.0f)));
  const F z = V::mul(s, s);
  F R = V::set1(2.0f / 11.0f);
  R = V::fma(R, z, V::set1(2.0f / 9.0f));
  R = V::fma(R, z, V::set1(2.0f / 7.0f));
  R = V::fma(R, z, V::set1(2.0f / 5.0f));
  R = V::fma(R, z, V::set1(2.0f / 3.0f));
  R = V::mul(R, z);
  const F hfsq = V::mul(V::set1(0.5f), V::mul(f, f));
  // lo = hfsq - (s·(hfsq + R) + e·ln2_lo); result = e·ln2_hi + (f - lo)
  const F lo = V::sub(hfsq, V::fma(s, V::add(hfsq, R), V::mul(e, V::set1(-1.904654323148236e-09f))));
  F y = V::fma(e, V::set1(0.693147182464599609375f), V::sub(f, lo));
  y = V::select(V::eq(x, V::set1(__builtin_inff())), x, y);
  y = V::select(V::eq(x, V::set1(0.0f)), V::set1(-__builtin_inff()), y);
  y = V::select(V::lt(x, V::set1(0.0f)), V::set1(__builtin_nanf("")), y);
  return V::select(V::isnan(x), x, y);
}

// sigmoid(x) = 1/(1+e) for x >= 0 and e/(1+e) for x < 0, with e = exp(-|x|): e never
// overflows, and for x < 0 the result underflows exactly when exp(x) does. The
// rounding of 1+e and of the quotient are both corrected (t + c = 1 + e exactly by
// Fast2Sum; the FMA residual num - q·t is exact), which leaves exp's own error, damped
// by 1/(1+e), and one final rounding: 1.5 ulp worst case instead of 2.4.
template <class V>
inline typename V::F sigmoid(const typename V::F& x) {
  using F = typename V::F;
  const F one = V::set1(1.0f);
  const F e = exp<V>(V::neg(V::abs(x)));
  const F num = V::select(V::ge(x, V::set1(0.0f)), one, e);
  const F t = V::add(one, e);
  const F c = V::add(V::sub(one, t), e);
  const F q = V::div(num, t);
  const F rem = V::fnma(q, c, V::fnma(q, t, num));
  return V::add(q, V::div(rem, t));
}

}  // namespace simd
}  // namespace finlora

#endif  // __x86_64__
