// siluMul: the gated activation of Llama's MLP, h = silu(gate) ⊙ up (Shazeer 2020,
// "GLU Variants Improve Transformer", SwiGLU), and its backward, each in one pass over
// its operands. Composed from unary and binary ops the same work is two passes
// forward and eight backward (sigmoid, 1 − s, x·(1 − s), 1 + ..., s·..., the two
// products of the mul), each over a [tokens, intermediate] tensor.
//
// siluMul ints: [n]; ptrs: [gate f32 [n], up f32 [n], out f32 [n] (=)]
// siluMulBackward ints: [n]; ptrs: [gate, up, dout, dgate (=), dup (=)]
//   s = sigmoid(gate); dup = dout · silu(gate); dgate = (dout · up) · (s · (1 + gate · (1 − s)))
//
// The vector paths evaluate silu and sigmoid with the unary kernel's algorithm
// (simd_math.h), so the output and dup have the bits of silu(gate) * up composed;
// dgate may differ from the composed backward by rounding, as the compiler is free to
// fuse its multiply-adds. The scalar path uses libm in f64 for sigmoid and silu, as the
// unary kernel's scalar path does.
#include "simd_math.h"  // first: it sets warning state around <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernel.h"

namespace finlora {
namespace {

struct Ptrs {
  const float* gate;
  const float* up;
  const float* dout;
  float* out;
  float* dgate;
  float* dup;
};

inline float sigmoid_scalar(float x) { return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x)))); }
inline float silu_scalar(float x) { return static_cast<float>(static_cast<double>(x) / (1.0 + std::exp(-static_cast<double>(x)))); }

void forward_scalar(const Ptrs& p, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) p.out[i] = silu_scalar(p.gate[i]) * p.up[i];
}

void backward_scalar(const Ptrs& p, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const float x = p.gate[i], s = sigmoid_scalar(x), g = p.dout[i];
    p.dup[i] = g * silu_scalar(x);
    p.dgate[i] = (g * p.up[i]) * (s * (1.0f + x * (1.0f - s)));
  }
}

#if defined(__x86_64__)

template <class V>
inline void forward_vec(const float* gate, const float* up, float* out) {
  const typename V::F x = V::load(gate);
  V::store(out, V::mul(V::mul(x, simd::sigmoid<V>(x)), V::load(up)));
}

template <class V>
inline void backward_vec(const float* gate, const float* up, const float* dout, float* dgate, float* dup) {
  const typename V::F x = V::load(gate), g = V::load(dout);
  const typename V::F s = simd::sigmoid<V>(x);
  const typename V::F one = V::set1(1.0f);
  V::store(dup, V::mul(g, V::mul(x, s)));
  const typename V::F t = V::mul(s, V::add(one, V::mul(x, V::sub(one, s))));
  V::store(dgate, V::mul(V::mul(g, V::load(up)), t));
}

// Full vectors, then the tail through small stack buffers so it sees the same arithmetic.
template <class V>
inline void forward_block(const Ptrs& p, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + V::W <= i1; i += V::W) forward_vec<V>(p.gate + i, p.up + i, p.out + i);
  if (i < i1) {
    float g[V::W] = {}, u[V::W] = {}, o[V::W];
    const size_t bytes = (i1 - i) * sizeof(float);
    std::memcpy(g, p.gate + i, bytes);
    std::memcpy(u, p.up + i, bytes);
    forward_vec<V>(g, u, o);
    std::memcpy(p.out + i, o, bytes);
  }
}

template <class V>
inline void backward_block(const Ptrs& p, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + V::W <= i1; i += V::W) backward_vec<V>(p.gate + i, p.up + i, p.dout + i, p.dgate + i, p.dup + i);
  if (i < i1) {
    float g[V::W] = {}, u[V::W] = {}, d[V::W] = {}, dg[V::W], du[V::W];
    const size_t bytes = (i1 - i) * sizeof(float);
    std::memcpy(g, p.gate + i, bytes);
    std::memcpy(u, p.up + i, bytes);
    std::memcpy(d, p.dout + i, bytes);
    backward_vec<V>(g, u, d, dg, du);
    std::memcpy(p.dgate + i, dg, bytes);
    std::memcpy(p.dup + i, du, bytes);
  }
}

FINLORA_AVX512_FN void forward_avx512(const Ptrs& p, int64_t i0, int64_t i1) { forward_block<simd::Avx512>(p, i0, i1); }
FINLORA_AVX2_FN void forward_avx2(const Ptrs& p, int64_t i0, int64_t i1) { forward_block<simd::Avx2>(p, i0, i1); }
FINLORA_AVX512_FN void backward_avx512(const Ptrs& p, int64_t i0, int64_t i1) { backward_block<simd::Avx512>(p, i0, i1); }
FINLORA_AVX2_FN void backward_avx2(const Ptrs& p, int64_t i0, int64_t i1) { backward_block<simd::Avx2>(p, i0, i1); }

#endif

using BlockFn = void (*)(const Ptrs&, int64_t, int64_t);

// Chunks of whole 64-element blocks, so no vector straddles two threads.
void run(int64_t n, const Ptrs& p, BlockFn avx512, BlockFn avx2, BlockFn scalar) {
  const Isa level = isa();
  const BlockFn fn = level == Isa::Avx512 ? avx512 : level == Isa::Avx2 ? avx2 : scalar;
  const int64_t blocks = (n + 63) / 64;
  parallel_for(blocks, 256, [&](int64_t b0, int64_t b1) { fn(p, b0 * 64, b1 * 64 < n ? b1 * 64 : n); });
}

void silu_mul_kernel(const KernelArgs& a) {
  const Ptrs p{static_cast<const float*>(a.ptrs[0]), static_cast<const float*>(a.ptrs[1]), nullptr, static_cast<float*>(a.ptrs[2]), nullptr, nullptr};
#if defined(__x86_64__)
  run(a.ints[0], p, forward_avx512, forward_avx2, forward_scalar);
#else
  run(a.ints[0], p, forward_scalar, forward_scalar, forward_scalar);
#endif
}

void silu_mul_backward_kernel(const KernelArgs& a) {
  const Ptrs p{static_cast<const float*>(a.ptrs[0]), static_cast<const float*>(a.ptrs[1]), static_cast<const float*>(a.ptrs[2]),
               nullptr, static_cast<float*>(a.ptrs[3]), static_cast<float*>(a.ptrs[4])};
#if defined(__x86_64__)
  run(a.ints[0], p, backward_avx512, backward_avx2, backward_scalar);
#else
  run(a.ints[0], p, backward_scalar, backward_scalar, backward_scalar);
#endif
}

}  // namespace

FINLORA_KERNEL("siluMul", silu_mul_kernel)
FINLORA_KERNEL("siluMulBackward", silu_mul_backward_kernel)

}  // namespace finlora
