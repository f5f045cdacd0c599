// siluMul: the gated activation of Llama's MLP, h = silu(gate) ⊙ up (Shazeer 2020,
// "GLU Variants Improve Transformer", SwiGLU), and its backward, one pass each, as
// native/cpu/kernels/swiglu.cc. Composed from unary and binary ops the same work is two
// passes forward and eight backward over a [tokens, intermediate] tensor.
//
// siluMul ints: [n, dtype T]; ptrs: [gate T [n], up T [n], out T [n] (=)]
// siluMulBackward ints: [n, dtype T]; ptrs: [gate, up, dout, dgate (=), dup (=)], all T
//   s = sigmoid(gate); dup = dout · silu(gate); dgate = (dout · up) · (s · (1 + gate · (1 − s)))
//
// For f32, sigmoid and silu are the unary kernel's: exp in f64 and one rounding to
// f32 (the CUDA library's expf is 2 ulp, above the contract's silu/sigmoid bounds), so
// an f32 output has the bits of the composed silu(gate) * up. For bf16 they are f32
// (expf): 2 f32 ulp is far below the bf16 rounding that follows, and f64 exps would
// make the bf16 kernels compute-bound. The products are f32; a bf16 result is rounded
// once. Elements go eight per thread, through 16-byte loads and stores when aligned.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

struct SiluSigmoid {
  float silu, sigmoid;
};

template <class T>
__device__ __forceinline__ SiluSigmoid silu_sigmoid(float x) {
  if constexpr (sizeof(T) == 4) {
    const double d = 1.0 + exp(-static_cast<double>(x));
    return {static_cast<float>(static_cast<double>(x) / d), static_cast<float>(1.0 / d)};
  } else {
    const float d = 1.0f + expf(-x);
    return {x / d, 1.0f / d};
  }
}

template <class T>
__device__ __forceinline__ float silu(float x) {
  if constexpr (sizeof(T) == 4) return static_cast<float>(static_cast<double>(x) / (1.0 + exp(-static_cast<double>(x))));
  else return x / (1.0f + expf(-x));
}

template <class T, bool VEC>
__global__ void silu_mul_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = chunk_begin() * 8; i < n; i += chunk_step() * 8) {
    if (VEC && i + 8 <= n) {
      float g[8], u[8];
      ld8(gate + i, g);
      ld8(up + i, u);
#pragma unroll
      for (int j = 0; j < 8; ++j) g[j] = silu<T>(g[j]) * u[j];
      st8(out + i, g);
    } else {
      for (int64_t e = i; e < i + 8 && e < n; ++e) st(out, e, silu<T>(ld(gate, e)) * ld(up, e));
    }
  }
}

template <class T>
__device__ __forceinline__ void backward_one(float x, float u, float d, float& dgate, float& dup) {
  const SiluSigmoid f = silu_sigmoid<T>(x);
  const float s = f.sigmoid;
  dup = d * f.silu;
  dgate = (d * u) * (s * (1.0f + x * (1.0f - s)));
}

template <class T, bool VEC>
__global__ void silu_mul_backward_kernel(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t n) {
  for (int64_t i = chunk_begin() * 8; i < n; i += chunk_step() * 8) {
    if (VEC && i + 8 <= n) {
      float g[8], u[8], d[8], dg[8], du[8];
      ld8(gate + i, g);
      ld8(up + i, u);
      ld8(dout + i, d);
#pragma unroll
      for (int j = 0; j < 8; ++j) backward_one<T>(g[j], u[j], d[j], dg[j], du[j]);
      st8(dgate + i, dg);
      st8(dup + i, du);
    } else {
      for (int64_t e = i; e < i + 8 && e < n; ++e) {
        float dg, du;
        backward_one<T>(ld(gate, e), ld(up, e), ld(dout, e), dg, du);
        st(dgate, e, dg);
        st(dup, e, du);
      }
    }
  }
}

bool all_aligned(const KernelArgs& a, size_t count) {
  for (size_t i = 0; i < count; ++i)
    if (!aligned16(a.ptrs[i])) return false;
  return true;
}

template <class T>
void forward(const KernelArgs& a, int64_t n) {
  const T* gate = static_cast<const T*>(a.ptrs[0]);
  const T* up = static_cast<const T*>(a.ptrs[1]);
  T* out = static_cast<T*>(a.ptrs[2]);
  const unsigned grid = grid_for((n + 7) / 8, 256);
  if (all_aligned(a, 3)) silu_mul_kernel<T, true><<<grid, 256, 0, stream()>>>(gate, up, out, n);
  else silu_mul_kernel<T, false><<<grid, 256, 0, stream()>>>(gate, up, out, n);
}

template <class T>
void backward(const KernelArgs& a, int64_t n) {
  const T* gate = static_cast<const T*>(a.ptrs[0]);
  const T* up = static_cast<const T*>(a.ptrs[1]);
  const T* dout = static_cast<const T*>(a.ptrs[2]);
  T* dgate = static_cast<T*>(a.ptrs[3]);
  T* dup = static_cast<T*>(a.ptrs[4]);
  const unsigned grid = grid_for((n + 7) / 8, 256);
  if (all_aligned(a, 5)) silu_mul_backward_kernel<T, true><<<grid, 256, 0, stream()>>>(gate, up, dout, dgate, dup, n);
  else silu_mul_backward_kernel<T, false><<<grid, 256, 0, stream()>>>(gate, up, dout, dgate, dup, n);
}

void silu_mul(const KernelArgs& a) {
  const int64_t n = a.ints[0], dt = trailing_dtype(a, 1);
  if (!compute_dtype_ok(a, dt) || n <= 0) return;
  if (dt == BF16) forward<bf16>(a, n);
  else forward<float>(a, n);
}

void silu_mul_backward(const KernelArgs& a) {
  const int64_t n = a.ints[0], dt = trailing_dtype(a, 1);
  if (!compute_dtype_ok(a, dt) || n <= 0) return;
  if (dt == BF16) backward<bf16>(a, n);
  else backward<float>(a, n);
}

}  // namespace

FINLORA_KERNEL("siluMul", silu_mul)
FINLORA_KERNEL("siluMulBackward", silu_mul_backward)

}  // namespace cuda
}  // namespace finlora
