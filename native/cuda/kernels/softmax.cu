// softmax: softmax or log-softmax over the last axis of contiguous f32 x [rows, cols],
// as native/cpu/kernels/softmax.cc: the row maximum is subtracted before exp; the sum
// of exponentials accumulates in f64; softmax divides each exp by the rounded sum,
// log-softmax forms x - (max + log(sum)) in f64 and rounds once. Special rows (the
// contract in src/backend/kernels.ts): all -inf gives 0 (log-softmax: -inf); a NaN or
// +inf anywhere makes the whole row NaN.
//
// ints: [rows, cols, log (0 or 1)]; ptrs: [x, out]. out may alias x. One block per row.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

__global__ void softmax_rows(const float* x, float* out, int64_t cols, bool log) {
  const float* row = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = NanMaxOp()(m, row[i]);
  m = block_reduce(m, NanMaxOp());
  if (isnan(m) || m == INFINITY) {
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) o[i] = NAN;
    return;
  }
  if (m == -INFINITY) {
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) o[i] = log ? -INFINITY : 0.0f;
    return;
  }
  double s = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += exp(static_cast<double>(row[i]) - m);
  s = block_reduce(s, SumOp());
  if (log) {
    const double shift = static_cast<double>(m) + ::log(s);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) o[i] = static_cast<float>(static_cast<double>(row[i]) - shift);
  } else {
    const float sum = static_cast<float>(s);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
      o[i] = __fdiv_rn(static_cast<float>(exp(static_cast<double>(row[i]) - m)), sum);
  }
}

void softmax(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1];
  if (rows == 0 || cols == 0) return;
  if (rows > 0x7fffffff) {
    a.error = "too many rows";
    return;
  }
  const int block = cols >= 1024 ? 512 : cols >= 256 ? 256 : 64;
  softmax_rows<<<static_cast<unsigned>(rows), block, 0, stream()>>>(static_cast<const float*>(a.ptrs[0]),
                                                                   static_cast<float*>(a.ptrs[1]), cols, a.ints[2] != 0);
}

}  // namespace

FINLORA_CUDA_KERNEL("softmax", softmax)

}  // namespace cuda
}  // namespace finlora
