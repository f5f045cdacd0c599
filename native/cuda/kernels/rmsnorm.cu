// rmsnorm and its backward, as native/cpu/kernels/rmsnorm.cc (Hugging Face's
// LlamaRMSNorm): y = (x * rstd) * w with rstd = 1/sqrt(mean(x^2) + eps); the mean of
// squares accumulates in f64 and rstd is rounded to f32 before use. x, out, dy and dx
// are T (f32 or bf16, computed in f32, a bf16 result rounded once); the weight W is f32
// or bf16 (read widened, exact); rstd and dweight are always f32.
//
// rmsnorm ints: [N, D, dtype W, dtype T]; floats: [eps]; ptrs: [x [N, D], weight [D], out [N, D], rstd [N]] (=)
// rmsnormBackward ints: [N, D, dtype W, dtype T]; ptrs: [x, weight, rstd, dy, dx [N, D] (=), dweight [D] (=)]
// rmsnormBackwardDx ints: [N, D, dtype W, accumulate, dtype T]; ptrs: [x, weight, rstd, dy, dx [N, D] (= or +=)]
//   dx alone, one launch (a frozen weight needs no dweight); with accumulate each dx is
//   rounded to T and added to what dx holds, as binary add would add it
//   dx = rstd * w * dy - x * rstd^3 / D * sum_k(dy_k * w_k * x_k)
//   dweight = sum over rows of dy * x * rstd, in f64 per column
#include <initializer_list>

#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <class T, class W>
__global__ void rmsnorm_rows(const T* x, const W* w, T* out, float* rstd, int64_t D, double eps) {
  const T* xr = x + blockIdx.x * D;
  T* y = out + blockIdx.x * D;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const double v = ld(xr, i);
    s += v * v;
  }
  s = block_reduce(s, SumOp());
  const float rs = static_cast<float>(1.0 / sqrt(s / static_cast<double>(D) + eps));
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) st(y, i, (ld(xr, i) * rs) * ld(w, i));
}

template <class T, class W, bool ACC = false>
__global__ void rmsnorm_dx(const T* x, const W* w, const float* rstd, const T* dy, T* dx, int64_t D) {
  const T* xr = x + blockIdx.x * D;
  const T* g = dy + blockIdx.x * D;
  T* o = dx + blockIdx.x * D;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += static_cast<double>(ld(g, i)) * ld(w, i) * ld(xr, i);
  s = block_reduce(s, SumOp());
  const double rs = rstd[blockIdx.x];
  const float a = static_cast<float>(rs);
  const float b = static_cast<float>(rs * rs * rs * s / static_cast<double>(D));
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    if (ACC) {
      T v[1];
      st(v, 0, a * ld(w, i) * ld(g, i) - b * ld(xr, i));
      st(o, i, __fadd_rn(ld(o, i), ld(v, 0)));
    } else {
      st(o, i, a * ld(w, i) * ld(g, i) - b * ld(xr, i));
    }
  }
}

// The same two kernels for rows that may be read 16 bytes at a time (D a multiple of 8,
// every row 16-byte aligned): the row is staged in shared memory as f32 (exact for bf16
// and f32) with 8-element loads, and the f64 sum then walks the staged row in the order
// of the scalar kernels above (thread t takes t, t + blockDim, ...; the same block_reduce
// at the same block size): rstd and y are the scalar kernels' bits, and so is dx's sum.
// Every f32 product and difference here is rounded on its own (the _rn intrinsics), so
// the bits do not hang on the compiler's choice of what to fuse; the scalar dx leaves
// that to nvcc, which fuses one product of its difference into an FMA: the two paths' dx
// can differ in the last bit (on an H200, about a quarter of f32 values and 4 in a
// million bf16 ones). The second pass reads the staged row back, so global memory sees
// each operand once.
template <class T, class W>
__global__ void rmsnorm_rows_vec(const T* x, const W* w, T* out, float* rstd, int64_t D, double eps) {
  extern __shared__ float4 stage4[];
  float* xs = reinterpret_cast<float*>(stage4);
  const T* xr = x + blockIdx.x * D;
  T* y = out + blockIdx.x * D;
  const int64_t chunks = D / 8;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[8];
    ld8(xr + 8 * c, v);
    st8(xs + 8 * c, v);
  }
  __syncthreads();
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const double v = xs[i];
    s = __fma_rn(v, v, s);
  }
  s = block_reduce(s, SumOp());
  const float rs = static_cast<float>(1.0 / sqrt(s / static_cast<double>(D) + eps));
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[8], wv[8];
    ld8(xs + 8 * c, v);
    ld8(w + 8 * c, wv);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = __fmul_rn(__fmul_rn(v[e], rs), wv[e]);
    st8(y + 8 * c, v);
  }
}

template <class T, class W, bool ACC = false>
__global__ void rmsnorm_dx_vec(const T* x, const W* w, const float* rstd, const T* dy, T* dx, int64_t D) {
  extern __shared__ float4 stage4[];
  float* gs = reinterpret_cast<float*>(stage4);
  float* xs = gs + D;
  const T* xr = x + blockIdx.x * D;
  const T* g = dy + blockIdx.x * D;
  T* o = dx + blockIdx.x * D;
  const int64_t chunks = D / 8;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float gv[8], xv[8];
    ld8(g + 8 * c, gv);
    ld8(xr + 8 * c, xv);
    st8(gs + 8 * c, gv);
    st8(xs + 8 * c, xv);
  }
  __syncthreads();
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
    s = __fma_rn(__dmul_rn(static_cast<double>(gs[i]), static_cast<double>(ld(w, i))), static_cast<double>(xs[i]), s);
  s = block_reduce(s, SumOp());
  const double rs = rstd[blockIdx.x];
  const float a = static_cast<float>(rs);
  const float b = static_cast<float>(rs * rs * rs * s / static_cast<double>(D));
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float gv[8], xv[8], wv[8], v[8];
    ld8(gs + 8 * c, gv);
    ld8(xs + 8 * c, xv);
    ld8(w + 8 * c, wv);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = __fsub_rn(__fmul_rn(__fmul_rn(a, wv[e]), gv[e]), __fmul_rn(b, xv[e]));
    if (ACC) {
      float prev[8];
      ld8(o + 8 * c, prev);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = __fadd_rn(prev[e], round_to(o, v[e]));
    }
    st8(o + 8 * c, v);
  }
}

// Shared memory the vectorised kernels may take (above 48 KiB a kernel must opt in): 12288
// f32 columns for dx's two staged rows, 24576 for the forward's one.
constexpr int kMaxStageBytes = 96 << 10;

// Whether the vectorised kernel applies: rows of a multiple of 8 elements at 16-byte
// aligned addresses (every operand), and the staged rows fit; once per kernel, the
// opt-in to more than the default shared memory.
template <auto Kernel>
bool vector_rows_ok(int64_t D, int64_t stage_bytes, std::initializer_list<const void*> ptrs) {
  if (D % 8 != 0 || stage_bytes > kMaxStageBytes) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  static const bool opted = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxStageBytes) == cudaSuccess;
  return opted || stage_bytes <= (48 << 10);
}

// dweight: each column's sum over rows in f64, in a fixed order: blocks of 32 columns
// by kLanes row lanes; lane l sums rows l, l + kLanes, ... and the partials are added
// in lane order (one owner per column, no atomics, the same bits every run). The lanes
// give a [4096, 4096] gradient 128 blocks of 1024 threads instead of 4096 threads.
constexpr int kLanes = 32;

template <class T>
__global__ void __launch_bounds__(32 * kLanes) rmsnorm_dweight(const T* x, const float* rstd, const T* dy, float* dw, int64_t N, int64_t D) {
  __shared__ double part[kLanes][33];
  const int64_t d = blockIdx.x * 32LL + threadIdx.x;
  double s = 0;
  if (d < D)
    for (int64_t r = threadIdx.y; r < N; r += kLanes) s += static_cast<double>(ld(dy, r * D + d)) * ld(x, r * D + d) * rstd[r];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    double t = part[0][threadIdx.x];
    for (int l = 1; l < kLanes; ++l) t += part[l][threadIdx.x];
    dw[d] = static_cast<float>(t);
  }
}

int block_for(int64_t D) { return D >= 2048 ? 512 : D >= 256 ? 256 : 64; }

// The weight's dtype: ints[2] when the call carries one (four ints), else f32.
int64_t weight_dtype(const KernelArgs& a) { return a.ints.size() >= 4 ? a.ints[2] : F32; }

template <class T, class W>
void forward(const KernelArgs& a, int64_t N, int64_t D) {
  const T* x = static_cast<const T*>(a.ptrs[0]);
  const W* w = static_cast<const W*>(a.ptrs[1]);
  T* out = static_cast<T*>(a.ptrs[2]);
  float* rstd = static_cast<float*>(a.ptrs[3]);
  const int64_t stage = D * 4;
  if (vector_rows_ok<rmsnorm_rows_vec<T, W>>(D, stage, {x, w, out}))
    rmsnorm_rows_vec<T, W><<<static_cast<unsigned>(N), block_for(D), static_cast<size_t>(stage), stream()>>>(x, w, out, rstd, D, a.floats[0]);
  else rmsnorm_rows<<<static_cast<unsigned>(N), block_for(D), 0, stream()>>>(x, w, out, rstd, D, a.floats[0]);
}

void rmsnorm(const KernelArgs& a) {
  const int64_t N = a.ints[0], D = a.ints[1], dt = trailing_dtype(a, 2), wt = weight_dtype(a);
  if (!compute_dtype_ok(a, dt)) return;
  if (N == 0) return;
  if (dt == BF16) {
    if (wt == BF16) forward<bf16, bf16>(a, N, D);
    else forward<bf16, float>(a, N, D);
  } else {
    if (wt == BF16) forward<float, bf16>(a, N, D);
    else forward<float, float>(a, N, D);
  }
}

template <class T, class W, bool ACC>
void launch_dx(const T* x, const W* w, const float* rstd, const T* dy, T* dx, int64_t N, int64_t D) {
  const int64_t stage = D * 8;
  if (vector_rows_ok<rmsnorm_dx_vec<T, W, ACC>>(D, stage, {x, w, dy, dx}))
    rmsnorm_dx_vec<T, W, ACC><<<static_cast<unsigned>(N), block_for(D), static_cast<size_t>(stage), stream()>>>(x, w, rstd, dy, dx, D);
  else rmsnorm_dx<T, W, ACC><<<static_cast<unsigned>(N), block_for(D), 0, stream()>>>(x, w, rstd, dy, dx, D);
}

template <class T, class W>
void backward(const KernelArgs& a, int64_t N, int64_t D) {
  const T* x = static_cast<const T*>(a.ptrs[0]);
  const W* w = static_cast<const W*>(a.ptrs[1]);
  const float* rstd = static_cast<const float*>(a.ptrs[2]);
  const T* dy = static_cast<const T*>(a.ptrs[3]);
  launch_dx<T, W, false>(x, w, rstd, dy, static_cast<T*>(a.ptrs[4]), N, D);
  rmsnorm_dweight<<<static_cast<unsigned>((D + 31) / 32), dim3(32, kLanes), 0, stream()>>>(x, rstd, dy,
                                                                                   static_cast<float*>(a.ptrs[5]), N, D);
}

void rmsnorm_backward(const KernelArgs& a) {
  const int64_t N = a.ints[0], D = a.ints[1], dt = trailing_dtype(a, 2);
  if (!compute_dtype_ok(a, dt)) return;
  if (N == 0 || D == 0) return;
  const int64_t wt = weight_dtype(a);
  if (dt == BF16) {
    if (wt == BF16) backward<bf16, bf16>(a, N, D);
    else backward<bf16, float>(a, N, D);
  } else {
    if (wt == BF16) backward<float, bf16>(a, N, D);
    else backward<float, float>(a, N, D);
  }
}

template <class T, class W>
void backward_dx(const KernelArgs& a, int64_t N, int64_t D, bool accumulate) {
  const T* x = static_cast<const T*>(a.ptrs[0]);
  const W* w = static_cast<const W*>(a.ptrs[1]);
  const float* rstd = static_cast<const float*>(a.ptrs[2]);
  const T* dy = static_cast<const T*>(a.ptrs[3]);
  T* dx = static_cast<T*>(a.ptrs[4]);
  if (accumulate) launch_dx<T, W, true>(x, w, rstd, dy, dx, N, D);
  else launch_dx<T, W, false>(x, w, rstd, dy, dx, N, D);
}

void rmsnorm_backward_dx(const KernelArgs& a) {
  const int64_t N = a.ints[0], D = a.ints[1], dt = trailing_dtype(a, 4), wt = a.ints[2];
  if (!compute_dtype_ok(a, dt)) return;
  if (N == 0 || D == 0) return;
  const bool acc = a.ints[3] != 0;
  if (dt == BF16) {
    if (wt == BF16) backward_dx<bf16, bf16>(a, N, D, acc);
    else backward_dx<bf16, float>(a, N, D, acc);
  } else {
    if (wt == BF16) backward_dx<float, bf16>(a, N, D, acc);
    else backward_dx<float, float>(a, N, D, acc);
  }
}

}  // namespace

FINLORA_KERNEL("rmsnorm", rmsnorm)
FINLORA_KERNEL("rmsnormBackwardDx", rmsnorm_backward_dx)
FINLORA_KERNEL("rmsnormBackward", rmsnorm_backward)

}  // namespace cuda
}  // namespace finlora
