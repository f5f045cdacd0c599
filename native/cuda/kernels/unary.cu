// unary: out = op(x) elementwise over contiguous T (f32 or bf16) for the ops of UNARY_OPS
// (neg, exp, log, sqrt, rsqrt, silu, sigmoid, abs, square). The contract asks exp,
// log, rsqrt within 1.5 ulp, sigmoid 1.5, silu 2 and the rest correctly rounded; the
// CUDA library's expf/logf (not the __expf intrinsics) are within 2 ulp, so those
// three and the two sigmoids are computed in f64 and rounded once. sqrt uses the
// correctly rounded __fsqrt_rn; rsqrt is 1/sqrt in f64 so rsqrt(-0) = -inf. A bf16
// result is that f32 value rounded once more to bf16.
//
// ints: [op, n, dtype T]; ptrs: [x T [n], out T [n]]. out may alias x.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

enum UnaryOp : int { Neg = 0, Exp, Log, Sqrt, Rsqrt, Silu, Sigmoid, Abs, Square };

template <int OP>
__device__ __forceinline__ float apply(float x) {
  if (OP == Neg) return -x;
  if (OP == Exp) return static_cast<float>(exp(static_cast<double>(x)));
  if (OP == Log) return static_cast<float>(log(static_cast<double>(x)));
  if (OP == Sqrt) return __fsqrt_rn(x);
  if (OP == Rsqrt) return static_cast<float>(1.0 / sqrt(static_cast<double>(x)));
  if (OP == Silu) return static_cast<float>(static_cast<double>(x) / (1.0 + exp(-static_cast<double>(x))));
  if (OP == Sigmoid) return static_cast<float>(1.0 / (1.0 + exp(-static_cast<double>(x))));
  if (OP == Abs) return fabsf(x);
  return x * x;
}

template <int OP, class T, bool VEC>
__global__ void unary_kernel(const T* x, T* out, int64_t n) {
  for (int64_t i = chunk_begin() * 8; i < n; i += chunk_step() * 8) {
    if (VEC && i + 8 <= n) {
      float v[8];
      ld8(x + i, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = apply<OP>(v[j]);
      st8(out + i, v);
    } else {
      for (int64_t e = i; e < i + 8 && e < n; ++e) st(out, e, apply<OP>(ld(x, e)));
    }
  }
}

template <int OP, class T>
void launch(const void* xp, void* outp, int64_t n) {
  const T* x = static_cast<const T*>(xp);
  T* out = static_cast<T*>(outp);
  const unsigned grid = grid_for((n + 7) / 8, 256);
  if (aligned16(x) && aligned16(out)) unary_kernel<OP, T, true><<<grid, 256, 0, stream()>>>(x, out, n);
  else unary_kernel<OP, T, false><<<grid, 256, 0, stream()>>>(x, out, n);
}

template <class T>
void dispatch(const KernelArgs& a, int64_t op, int64_t n) {
  const void* x = a.ptrs[0];
  void* out = a.ptrs[1];
  switch (op) {
    case Neg: launch<Neg, T>(x, out, n); break;
    case Exp: launch<Exp, T>(x, out, n); break;
    case Log: launch<Log, T>(x, out, n); break;
    case Sqrt: launch<Sqrt, T>(x, out, n); break;
    case Rsqrt: launch<Rsqrt, T>(x, out, n); break;
    case Silu: launch<Silu, T>(x, out, n); break;
    case Sigmoid: launch<Sigmoid, T>(x, out, n); break;
    case Abs: launch<Abs, T>(x, out, n); break;
    case Square: launch<Square, T>(x, out, n); break;
    default: a.error = "unknown op " + std::to_string(op);
  }
}

void unary(const KernelArgs& a) {
  const int64_t op = a.ints[0], n = a.ints[1], dt = trailing_dtype(a, 2);
  if (!compute_dtype_ok(a, dt)) return;
  if (n <= 0) return;
  if (dt == BF16) dispatch<bf16>(a, op, n);
  else dispatch<float>(a, op, n);
}

}  // namespace

FINLORA_KERNEL("unary", unary)

}  // namespace cuda
}  // namespace finlora
