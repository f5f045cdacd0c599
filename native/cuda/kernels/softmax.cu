// softmax: softmax or log-softmax over the last axis of contiguous x [rows, cols] (T =
// f32 or bf16; x and out T, arithmetic as for f32, a bf16 result rounded once more),
// as native/cpu/kernels/softmax.cc: the row maximum is subtracted before exp; the sum
// of exponentials accumulates in f64; softmax divides each exp by the rounded sum,
// log-softmax forms x - (max + log(sum)) in f64 and rounds once. Special rows (the
// contract in src/backend/kernels.ts): all -inf gives 0 (log-softmax: -inf); a NaN or
// +inf anywhere makes the whole row NaN.
//
// ints: [rows, cols, log (0 or 1), dtype T]; ptrs: [x T, out T]. out may alias x. One block per row.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <class T>
__global__ void softmax_rows(const T* x, T* out, int64_t cols, bool log) {
  const T* row = x + blockIdx.x * cols;
  T* o = out + blockIdx.x * cols;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = NanMaxOp()(m, ld(row, i));
  m = block_reduce(m, NanMaxOp());
  if (isnan(m) || m == INFINITY) {
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) st(o, i, NAN);
    return;
  }
  if (m == -INFINITY) {
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) st(o, i, log ? -INFINITY : 0.0f);
    return;
  }
  double s = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += exp(static_cast<double>(ld(row, i)) - m);
  s = block_reduce(s, SumOp());
  if (log) {
    const double shift = static_cast<double>(m) + ::log(s);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) st(o, i, static_cast<float>(static_cast<double>(ld(row, i)) - shift));
  } else {
    const float sum = static_cast<float>(s);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
      st(o, i, __fdiv_rn(static_cast<float>(exp(static_cast<double>(ld(row, i)) - m)), sum));
  }
}

void softmax(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1], dt = trailing_dtype(a, 3);
  if (!compute_dtype_ok(a, dt)) return;
  if (rows == 0 || cols == 0) return;
  if (rows > 0x7fffffff) {
    a.error = "too many rows";
    return;
  }
  const int block = cols >= 1024 ? 512 : cols >= 256 ? 256 : 64;
  const bool log = a.ints[2] != 0;
  if (dt == BF16)
    softmax_rows<<<static_cast<unsigned>(rows), block, 0, stream()>>>(static_cast<const bf16*>(a.ptrs[0]),
                                                                     static_cast<bf16*>(a.ptrs[1]), cols, log);
  else
    softmax_rows<<<static_cast<unsigned>(rows), block, 0, stream()>>>(static_cast<const float*>(a.ptrs[0]),
                                                                     static_cast<float*>(a.ptrs[1]), cols, log);
}

}  // namespace

FINLORA_KERNEL("softmax", softmax)

}  // namespace cuda
}  // namespace finlora
