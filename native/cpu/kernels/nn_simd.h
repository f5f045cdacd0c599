// Helpers shared by the neural-network kernels (embedding, rmsnorm, rope, attention,
// cross-entropy, dropout): 8-lane float vectors written with GCC vector extensions,
// a per-ISA compilation of a kernel body that follows isa() (so FINLORA_CPU_ISA and
// setIsa reach these kernels and tests can run each code path), and a round-robin
// parallel loop for tasks of uneven cost.
//
// Why vector extensions rather than plain loops: dot products and row sums are
// reductions, which the compiler may not reorder without -ffast-math, so they would
// stay scalar. Explicit lanes give the reordering on purpose and nothing else.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel.h"

// The 32-byte vector type changes the calling convention between ISAs; every helper
// here is always inlined, so no such value crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace finlora {
namespace nn {

typedef float v8f __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define FINLORA_INLINE inline __attribute__((always_inline))

FINLORA_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
FINLORA_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
FINLORA_INLINE v8f splat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }
FINLORA_INLINE float hsum8(v8f v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/** sum_i a[i] * b[i] in f32 with 16 lanes of partial sums. */
FINLORA_INLINE float dot(const float* a, const float* b, int64_t n) {
  v8f s0 = {}, s1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 += load8(a + i) * load8(b + i);
    s1 += load8(a + i + 8) * load8(b + i + 8);
  }
  if (i + 8 <= n) {
    s0 += load8(a + i) * load8(b + i);
    i += 8;
  }
  float s = hsum8(s0 + s1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

/** y[i] += alpha * x[i]. */
FINLORA_INLINE void axpy(float alpha, const float* x, float* y, int64_t n) {
  const v8f va = splat8(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(y + i, load8(y + i) + va * load8(x + i));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

/** y[i] *= alpha. */
FINLORA_INLINE void scale(float alpha, float* y, int64_t n) {
  const v8f va = splat8(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(y + i, load8(y + i) * va);
  for (; i < n; ++i) y[i] *= alpha;
}

/** sum_i x[i]^2 accumulated in f64 (each square exact in f64). */
FINLORA_INLINE double sumsq_f64(const float* x, int64_t n) {
  v4d s0 = {}, s1 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v4f lo, hi;
    std::memcpy(&lo, x + i, sizeof lo);
    std::memcpy(&hi, x + i + 4, sizeof hi);
    const v4d a = __builtin_convertvector(lo, v4d), b = __builtin_convertvector(hi, v4d);
    s0 += a * a;
    s1 += b * b;
  }
  const v4d s = s0 + s1;
  double r = (s[0] + s[2]) + (s[1] + s[3]);
  for (; i < n; ++i) r += static_cast<double>(x[i]) * x[i];
  return r;
}

/** sum_i a[i] * b[i] * c[i] accumulated in f64. */
FINLORA_INLINE double dot3_f64(const float* a, const float* b, const float* c, int64_t n) {
  v4d s0 = {}, s1 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v4f a0, a1, b0, b1, c0, c1;
    std::memcpy(&a0, a + i, 16);
    std::memcpy(&a1, a + i + 4, 16);
    std::memcpy(&b0, b + i, 16);
    std::memcpy(&b1, b + i + 4, 16);
    std::memcpy(&c0, c + i, 16);
    std::memcpy(&c1, c + i + 4, 16);
    s0 += __builtin_convertvector(a0, v4d) * __builtin_convertvector(b0, v4d) * __builtin_convertvector(c0, v4d);
    s1 += __builtin_convertvector(a1, v4d) * __builtin_convertvector(b1, v4d) * __builtin_convertvector(c1, v4d);
  }
  const v4d s = s0 + s1;
  double r = (s[0] + s[2]) + (s[1] + s[3]);
  for (; i < n; ++i) r += static_cast<double>(a[i]) * b[i] * c[i];
  return r;
}

/** max_i x[i] (NaN propagates); -inf for n == 0. */
FINLORA_INLINE float max_of(const float* x, int64_t n) {
  float m = -INFINITY;
  bool nan = false;
  int64_t i = 0;
  if (n >= 8) {
    v8f vm = splat8(-INFINITY);
    v8i vnan = {};
    for (; i + 8 <= n; i += 8) {
      const v8f v = load8(x + i);
      vm = v > vm ? v : vm;
      vnan |= v != v;  // the comparison above would drop a NaN
    }
    for (int k = 0; k < 8; ++k) {
      m = vm[k] > m ? vm[k] : m;
      nan |= vnan[k] != 0;
    }
  }
  for (; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    nan |= x[i] != x[i];
  }
  return nan ? NAN : m;
}

// NaN-propagating: a NaN lane makes the result NaN, as torch.max does.
FINLORA_INLINE float hmax8(v8f v) {
  float m = v[0];
  for (int k = 1; k < 8; ++k) m = (v[k] > m || v[k] != v[k]) ? v[k] : m;
  return m;
}

/** Lane indices {base, ..., base + 7} as floats, for masking tails. */
FINLORA_INLINE v8f lanes_from(int64_t base) {
  const float b = static_cast<float>(base);
  return v8f{b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7};
}

/**
 * acc[0, D) += sum_j c[j * cstride] * rows[j * rstride + (0, D)], for j < n: a
 * vector-matrix product whose accumulator stays in registers, 64 columns at a time.
 */
FINLORA_INLINE void gemv_acc(float* acc, const float* c, int64_t cstride, const float* rows, int64_t rstride, int64_t n,
                             int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) {
    v8f a0 = load8(acc + d0), a1 = load8(acc + d0 + 8), a2 = load8(acc + d0 + 16), a3 = load8(acc + d0 + 24);
    v8f a4 = load8(acc + d0 + 32), a5 = load8(acc + d0 + 40), a6 = load8(acc + d0 + 48), a7 = load8(acc + d0 + 56);
    for (int64_t j = 0; j < n; ++j) {
      const float cj = c[j * cstride];
      if (cj == 0.f) continue;
      const v8f vc = splat8(cj);
      const float* r = rows + j * rstride + d0;
      a0 += vc * load8(r);
      a1 += vc * load8(r + 8);
      a2 += vc * load8(r + 16);
      a3 += vc * load8(r + 24);
      a4 += vc * load8(r + 32);
      a5 += vc * load8(r + 40);
      a6 += vc * load8(r + 48);
      a7 += vc * load8(r + 56);
    }
    store8(acc + d0, a0);
    store8(acc + d0 + 8, a1);
    store8(acc + d0 + 16, a2);
    store8(acc + d0 + 24, a3);
    store8(acc + d0 + 32, a4);
    store8(acc + d0 + 40, a5);
    store8(acc + d0 + 48, a6);
    store8(acc + d0 + 56, a7);
  }
  if (d0 == D) return;
  const int64_t nv = (D - d0) / 8, d1 = d0 + 8 * nv;
  v8f a[7];
  for (int64_t v = 0; v < nv; ++v) a[v] = load8(acc + d0 + 8 * v);
  for (int64_t j = 0; j < n; ++j) {
    const float cj = c[j * cstride];
    if (cj == 0.f) continue;
    const v8f vc = splat8(cj);
    const float* r = rows + j * rstride;
    for (int64_t v = 0; v < nv; ++v) a[v] += vc * load8(r + d0 + 8 * v);
    for (int64_t d = d1; d < D; ++d) acc[d] += cj * r[d];
  }
  for (int64_t v = 0; v < nv; ++v) store8(acc + d0 + 8 * v, a[v]);
}

// Each kernel writes its hot loop once as an always-inline body with the signature
// void body(const P& p, int64_t begin, int64_t end); FINLORA_ISA_VARIANTS compiles it
// for AVX-512, AVX2+FMA and the baseline, and name##_pick() returns the one isa()
// selects. Lambdas do not inherit target attributes, so the body must call only
// always-inline helpers for its vector work. FINLORA_ISA_VARIANTS_BY takes a second
// body for the baseline (a template body instantiated with what differs there, such
// as simd_math.h's exp on AVX2/AVX-512 against libm); its AVX variants are `flatten`,
// so a target-specific helper they call is inlined into them.
#if defined(__x86_64__) && !defined(__clang__)
#define FINLORA_ISA_VARIANTS_IMPL(name, body, scalar_body, P, extra)                                   \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) extra void name##_avx512(   \
      const P& p, int64_t b, int64_t e) {                                                            \
    body(p, b, e);                                                                                   \
  }                                                                                                  \
  __attribute__((target("avx2,fma"))) extra void name##_avx2(const P& p, int64_t b, int64_t e) {     \
    body(p, b, e);                                                                                   \
  }                                                                                                  \
  void name##_scalar(const P& p, int64_t b, int64_t e) { scalar_body(p, b, e); }                     \
  using name##_fn = void (*)(const P&, int64_t, int64_t);                                            \
  name##_fn name##_pick() {                                                                          \
    switch (isa()) {                                                                                 \
      case Isa::Avx512: return name##_avx512;                                                        \
      case Isa::Avx2: return name##_avx2;                                                            \
      default: return name##_scalar;                                                                 \
    }                                                                                                \
  }
#define FINLORA_ISA_VARIANTS(name, body, P) FINLORA_ISA_VARIANTS_IMPL(name, body, body, P, )
#define FINLORA_ISA_VARIANTS_BY(name, body, scalar_body, P) \
  FINLORA_ISA_VARIANTS_IMPL(name, body, scalar_body, P, __attribute__((flatten)))
#else
#define FINLORA_ISA_VARIANTS_BY(name, body, scalar_body, P)                         \
  void name##_scalar(const P& p, int64_t b, int64_t e) { scalar_body(p, b, e); }  \
  using name##_fn = void (*)(const P&, int64_t, int64_t);                         \
  name##_fn name##_pick() { return name##_scalar; }
#define FINLORA_ISA_VARIANTS(name, body, P) FINLORA_ISA_VARIANTS_BY(name, body, body, P)
#endif

/**
 * Runs fn(p, task, task + 1) for every task in [0, n), dealing tasks to threads
 * round-robin rather than in contiguous ranges: causal attention's query blocks grow
 * in cost along the sequence, and contiguous ranges would leave one thread with the
 * expensive end.
 */
template <class P, class Fn>
void parallel_tasks(int64_t n, const P& p, Fn fn) {
  if (n <= 0) return;
  const int64_t lanes = n < num_threads() ? n : num_threads();
  parallel_for(lanes, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l)
      for (int64_t t = l; t < n; t += lanes) fn(p, t, t + 1);
  });
}

}  // namespace nn
}  // namespace finlora
