// rmsnorm and its backward, as native/cpu/kernels/rmsnorm.cc (Hugging Face's
// LlamaRMSNorm): y = (x * rstd) * w with rstd = 1/sqrt(mean(x^2) + eps); the mean of
// squares accumulates in f64 and rstd is rounded to f32 before use.
//
// rmsnorm ints: [N, D]; floats: [eps]; ptrs: [x [N, D], weight [D], out [N, D], rstd [N]] (=)
// rmsnormBackward ints: [N, D]; ptrs: [x, weight, rstd, dy, dx [N, D] (=), dweight [D] (+=)]
//   dx = rstd * w * dy - x * rstd^3 / D * sum_k(dy_k * w_k * x_k)
//   dweight += sum over rows of dy * x * rstd, in f64 per column
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

__global__ void rmsnorm_rows(const float* x, const float* w, float* out, float* rstd, int64_t D, double eps) {
  const float* xr = x + blockIdx.x * D;
  float* y = out + blockIdx.x * D;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += static_cast<double>(xr[i]) * xr[i];
  s = block_reduce(s, SumOp());
  const float rs = static_cast<float>(1.0 / sqrt(s / static_cast<double>(D) + eps));
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) y[i] = (xr[i] * rs) * w[i];
}

__global__ void rmsnorm_dx(const float* x, const float* w, const float* rstd, const float* dy, float* dx, int64_t D) {
  const float* xr = x + blockIdx.x * D;
  const float* g = dy + blockIdx.x * D;
  float* o = dx + blockIdx.x * D;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += static_cast<double>(g[i]) * w[i] * xr[i];
  s = block_reduce(s, SumOp());
  const double rs = rstd[blockIdx.x];
  const float a = static_cast<float>(rs);
  const float b = static_cast<float>(rs * rs * rs * s / static_cast<double>(D));
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) o[i] = a * w[i] * g[i] - b * xr[i];
}

__global__ void rmsnorm_dweight(const float* x, const float* rstd, const float* dy, float* dw, int64_t N, int64_t D) {
  for (int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; d < D;
       d += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t r = 0; r < N; ++r) s += static_cast<double>(dy[r * D + d]) * x[r * D + d] * rstd[r];
    dw[d] += static_cast<float>(s);
  }
}

int block_for(int64_t D) { return D >= 2048 ? 512 : D >= 256 ? 256 : 64; }

void rmsnorm(const KernelArgs& a) {
  const int64_t N = a.ints[0], D = a.ints[1];
  if (N == 0) return;
  rmsnorm_rows<<<static_cast<unsigned>(N), block_for(D), 0, stream()>>>(
      static_cast<const float*>(a.ptrs[0]), static_cast<const float*>(a.ptrs[1]), static_cast<float*>(a.ptrs[2]),
      static_cast<float*>(a.ptrs[3]), D, a.floats[0]);
}

void rmsnorm_backward(const KernelArgs& a) {
  const int64_t N = a.ints[0], D = a.ints[1];
  if (N == 0 || D == 0) return;
  const float* x = static_cast<const float*>(a.ptrs[0]);
  const float* w = static_cast<const float*>(a.ptrs[1]);
  const float* rstd = static_cast<const float*>(a.ptrs[2]);
  const float* dy = static_cast<const float*>(a.ptrs[3]);
  rmsnorm_dx<<<static_cast<unsigned>(N), block_for(D), 0, stream()>>>(x, w, rstd, dy, static_cast<float*>(a.ptrs[4]), D);
  rmsnorm_dweight<<<grid_for(D, 128), 128, 0, stream()>>>(x, rstd, dy, static_cast<float*>(a.ptrs[5]), N, D);
}

}  // namespace

FINLORA_CUDA_KERNEL("rmsnorm", rmsnorm)
FINLORA_CUDA_KERNEL("rmsnormBackward", rmsnorm_backward)

}  // namespace cuda
}  // namespace finlora
