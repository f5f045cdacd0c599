// unary: out = op(x) elementwise over contiguous f32, for the ops of UNARY_OPS in
// src/backend/kernels.ts (neg, exp, log, sqrt, rsqrt, silu, sigmoid, abs, square).
//
// ints: [op, n]; ptrs: [x, out]. out may alias x (every lane is loaded before it is
// stored).
//
// The AVX-512 and AVX2 paths share one algorithm (simd_math.h) and give bit-identical
// results; the scalar path uses libm (in f64 for sigmoid and silu), so it agrees with
// them to the accuracy stated there, not bit for bit. Vector tails go through a small
// stack buffer so every element of a vector path sees the same arithmetic.
#include "simd_math.h"  // first: it sets warning state around <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernel.h"

namespace finlora {
namespace {

enum UnaryOp : int64_t { Neg = 0, Exp, Log, Sqrt, Rsqrt, Silu, Sigmoid, Abs, Square, NumOps };

// ---------------------------------------------------------------- scalar

template <int OP>
inline float scalar_op(float x) {
  if (OP == Neg) return -x;
  if (OP == Exp) return std::exp(x);
  if (OP == Log) return std::log(x);
  if (OP == Sqrt) return std::sqrt(x);
  if (OP == Rsqrt) return 1.0f / std::sqrt(x);
  if (OP == Silu) return static_cast<float>(static_cast<double>(x) / (1.0 + std::exp(-static_cast<double>(x))));
  if (OP == Sigmoid) return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x))));
  if (OP == Abs) return std::fabs(x);
  return x * x;
}

template <int OP>
void scalar_loop(const float* x, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = scalar_op<OP>(x[i]);
}

void scalar_block(int64_t op, const float* x, float* o, int64_t n) {
  switch (op) {
    case Neg: return scalar_loop<Neg>(x, o, n);
    case Exp: return scalar_loop<Exp>(x, o, n);
    case Log: return scalar_loop<Log>(x, o, n);
    case Sqrt: return scalar_loop<Sqrt>(x, o, n);
    case Rsqrt: return scalar_loop<Rsqrt>(x, o, n);
    case Silu: return scalar_loop<Silu>(x, o, n);
    case Sigmoid: return scalar_loop<Sigmoid>(x, o, n);
    case Abs: return scalar_loop<Abs>(x, o, n);
    default: return scalar_loop<Square>(x, o, n);
  }
}

// ---------------------------------------------------------------- vector

#if defined(__x86_64__)

template <class V, int OP>
inline typename V::F vec_op(const typename V::F& x) {
  if (OP == Neg) return V::neg(x);
  if (OP == Exp) return simd::exp<V>(x);
  if (OP == Log) return simd::log<V>(x);
  if (OP == Sqrt) return V::sqrt(x);
  if (OP == Rsqrt) return V::div(V::set1(1.0f), V::sqrt(x));
  if (OP == Silu) return V::mul(x, simd::sigmoid<V>(x));
  if (OP == Sigmoid) return simd::sigmoid<V>(x);
  if (OP == Abs) return V::abs(x);
  return V::mul(x, x);
}

template <class V, int OP>
inline void vec_loop(const float* x, float* o, int64_t n) {
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) V::store(o + i, vec_op<V, OP>(V::load(x + i)));
  if (i < n) {
    float buf[V::W] = {};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    V::store(buf, vec_op<V, OP>(V::load(buf)));
    std::memcpy(o + i, buf, (n - i) * sizeof(float));
  }
}

template <class V>
inline void vec_block(int64_t op, const float* x, float* o, int64_t n) {
  switch (op) {
    case Neg: return vec_loop<V, Neg>(x, o, n);
    case Exp: return vec_loop<V, Exp>(x, o, n);
    case Log: return vec_loop<V, Log>(x, o, n);
    case Sqrt: return vec_loop<V, Sqrt>(x, o, n);
    case Rsqrt: return vec_loop<V, Rsqrt>(x, o, n);
    case Silu: return vec_loop<V, Silu>(x, o, n);
    case Sigmoid: return vec_loop<V, Sigmoid>(x, o, n);
    case Abs: return vec_loop<V, Abs>(x, o, n);
    default: return vec_loop<V, Square>(x, o, n);
  }
}

FINLORA_AVX512_FN void avx512_block(int64_t op, const float* x, float* o, int64_t n) {
  vec_block<simd::Avx512>(op, x, o, n);
}
FINLORA_AVX2_FN void avx2_block(int64_t op, const float* x, float* o, int64_t n) {
  vec_block<simd::Avx2>(op, x, o, n);
}

#endif

void unary_kernel(const KernelArgs& a) {
  const int64_t op = a.ints[0], n = a.ints[1];
  if (op < 0 || op >= NumOps) {
    a.error = "unary: unknown op code " + std::to_string(op);
    return;
  }
  const float* x = static_cast<const float*>(a.ptrs[0]);
  float* o = static_cast<float*>(a.ptrs[1]);
  const Isa level = isa();
  // Chunks are whole multiples of 64 elements so that no vector straddles two threads.
  const int64_t blocks = (n + 63) / 64;
  parallel_for(blocks, 256, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * 64, i1 = b1 * 64 < n ? b1 * 64 : n;
#if defined(__x86_64__)
    if (level == Isa::Avx512) return avx512_block(op, x + i0, o + i0, i1 - i0);
    if (level == Isa::Avx2) return avx2_block(op, x + i0, o + i0, i1 - i0);
#endif
    scalar_block(op, x + i0, o + i0, i1 - i0);
  });
}

}  // namespace

FINLORA_KERNEL("unary", unary_kernel)

}  // namespace finlora
