// softmax: softmax or log-softmax over the last axis of contiguous f32 x [rows, cols].
//
// ints: [rows, cols, log (0 or 1)]; ptrs: [x, out]. out may alias x.
//
// Numerically stable: the row maximum is subtracted before exp, so no input
// overflows. The sum of exponentials accumulates in f64 (a 128k-entry vocabulary row
// stays exact to f32 precision); softmax divides each exp by the rounded sum, and
// log-softmax forms x - (max + log(sum)) in f64 and rounds once.
// Special rows (the contract in src/backend/kernels.ts): every entry -inf gives 0
// (log-softmax: -inf), unlike PyTorch's NaN; a NaN or +inf anywhere makes the row NaN.
//
// Rows run in parallel; within a row the AVX-512 / AVX2 paths use the vector exp of
// simd_math.h, the scalar path computes in f64.
#include "simd_math.h"  // first: it sets warning state around <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernel.h"

namespace finlora {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A row whose maximum is -inf or NaN: all -inf (fully masked) or holding a NaN.
void special_row(const float* x, float* o, int64_t n, bool log, float mx) {
  bool nan = std::isnan(mx);
  for (int64_t i = 0; i < n && !nan; ++i) nan = std::isnan(x[i]);
  const float v = nan ? std::numeric_limits<float>::quiet_NaN() : (log ? kNegInf : 0.0f);
  for (int64_t i = 0; i < n; ++i) o[i] = v;
}

void scalar_row(const float* x, float* o, int64_t n, bool log) {
  float mx = kNegInf;
  for (int64_t i = 0; i < n; ++i) mx = (x[i] > mx || std::isnan(x[i])) ? x[i] : mx;
  if (!(mx > kNegInf)) return special_row(x, o, n, log, mx);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
  if (log) {
    const double c = mx + std::log(sum);
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(x[i] - c);
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(std::exp(static_cast<double>(x[i]) - mx) / sum);
  }
}

#if defined(__x86_64__)

template <class V>
inline void vec_row(const float* x, float* o, int64_t n, bool log) {
  using F = typename V::F;
  using D = typename V::D;
  constexpr int W = V::W;
  const int64_t nv = n / W * W, tail = n - nv;
  // The tail is padded with -inf: it leaves the max alone and its exp is 0.
  float xt[W], ot[W];
  for (int k = 0; k < W; ++k) xt[k] = kNegInf;
  std::memcpy(xt, x + nv, tail * sizeof(float));

  F m = V::set1(kNegInf);
  for (int64_t i = 0; i < nv; i += W) m = V::max(m, V::load(x + i));
  m = V::max(m, V::load(xt));
  const float mx = V::hmax(m);
  // NOTE: x86 max drops NaN depending on operand order; special_row and the sum below
  // (NaN - max is NaN) make a NaN row NaN either way.
  if (!(mx > kNegInf)) return special_row(x, o, n, log, mx);

  const F mv = V::set1(mx);
  D s0 = V::dzero(), s1 = V::dzero();
  for (int64_t i = 0; i < nv; i += W) {
    const F e = simd::exp<V>(V::sub(V::load(x + i), mv));
    if (!log) V::store(o + i, e);
    s0 = V::dadd(s0, V::widen_lo(e));
    s1 = V::dadd(s1, V::widen_hi(e));
  }
  const F et = simd::exp<V>(V::sub(V::load(xt), mv));
  s0 = V::dadd(s0, V::widen_lo(et));
  s1 = V::dadd(s1, V::widen_hi(et));
  const double sum = V::dsum(s0) + V::dsum(s1);

  if (!log) {
    const F sv = V::set1(static_cast<float>(sum));
    for (int64_t i = 0; i < nv; i += W) V::store(o + i, V::div(V::load(o + i), sv));
    V::store(ot, V::div(et, sv));
  } else {
    const D c = V::dset1(mx + std::log(sum));
    for (int64_t i = 0; i < nv; i += W) {
      const F v = V::load(x + i);
      V::store(o + i, V::narrow(V::dsub(V::widen_lo(v), c), V::dsub(V::widen_hi(v), c)));
    }
    const F v = V::load(xt);
    V::store(ot, V::narrow(V::dsub(V::widen_lo(v), c), V::dsub(V::widen_hi(v), c)));
  }
  std::memcpy(o + nv, ot, tail * sizeof(float));
}

FINLORA_AVX512_FN void avx512_rows(const float* x, float* o, int64_t r0, int64_t r1, int64_t n, bool log) {
  for (int64_t r = r0; r < r1; ++r) vec_row<simd::Avx512>(x + r * n, o + r * n, n, log);
}
FINLORA_AVX2_FN void avx2_rows(const float* x, float* o, int64_t r0, int64_t r1, int64_t n, bool log) {
  for (int64_t r = r0; r < r1; ++r) vec_row<simd::Avx2>(x + r * n, o + r * n, n, log);
}

#endif

void softmax_kernel(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1];
  const bool log = a.ints[2] != 0;
  const float* x = static_cast<const float*>(a.ptrs[0]);
  float* o = static_cast<float*>(a.ptrs[1]);
  if (cols <= 0) return;
  const Isa level = isa();
  parallel_for(rows, 1 + (1 << 14) / cols, [&](int64_t r0, int64_t r1) {
#if defined(__x86_64__)
    if (level == Isa::Avx512) return avx512_rows(x, o, r0, r1, cols, log);
    if (level == Isa::Avx2) return avx2_rows(x, o, r0, r1, cols, log);
#endif
    for (int64_t r = r0; r < r1; ++r) scalar_row(x + r * cols, o + r * cols, cols, log);
  });
}

}  // namespace

FINLORA_KERNEL("softmax", softmax_kernel)

}  // namespace finlora
