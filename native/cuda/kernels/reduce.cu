// reduce: sum or max over the middle axis of x viewed as [outer, n, inner] into
// out [outer, inner], as native/cpu/kernels/reduce.cc. Sums accumulate in f64 so long
// reductions keep full f32 accuracy; max propagates NaN; an empty axis gives 0 / -inf.
//
// ints: [op (0 sum, 1 max), outer, n, inner]; ptrs: [x, out]
//
// inner == 1: one block per row, a block reduction. inner > 1: one thread per output
// column, walking n; neighbouring threads read neighbouring columns, so loads coalesce.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <bool MAX>
__global__ void reduce_rows(const float* x, float* out, int64_t n) {
  const float* row = x + blockIdx.x * n;
  if (MAX) {
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = NanMaxOp()(m, row[i]);
    m = block_reduce(m, NanMaxOp());
    if (threadIdx.x == 0) out[blockIdx.x] = m;
  } else {
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += row[i];
    s = block_reduce(s, SumOp());
    if (threadIdx.x == 0) out[blockIdx.x] = static_cast<float>(s);
  }
}

template <bool MAX>
__global__ void reduce_columns(const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  const int64_t total = outer * inner;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = e / inner, c = e % inner;
    const float* p = x + o * n * inner + c;
    if (MAX) {
      float m = -INFINITY;
      for (int64_t i = 0; i < n; ++i) m = NanMaxOp()(m, p[i * inner]);
      out[e] = m;
    } else {
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += p[i * inner];
      out[e] = static_cast<float>(s);
    }
  }
}

void reduce(const KernelArgs& a) {
  const bool max = a.ints[0] == 1;
  const int64_t outer = a.ints[1], n = a.ints[2], inner = a.ints[3];
  if (outer * inner == 0) return;
  const float* x = static_cast<const float*>(a.ptrs[0]);
  float* out = static_cast<float*>(a.ptrs[1]);
  if (inner == 1 && outer <= 0x7fffffff) {
    if (max) reduce_rows<true><<<static_cast<unsigned>(outer), 256, 0, stream()>>>(x, out, n);
    else reduce_rows<false><<<static_cast<unsigned>(outer), 256, 0, stream()>>>(x, out, n);
  } else {
    if (max) reduce_columns<true><<<grid_for(outer * inner, 256), 256, 0, stream()>>>(x, out, outer, n, inner);
    else reduce_columns<false><<<grid_for(outer * inner, 256), 256, 0, stream()>>>(x, out, outer, n, inner);
  }
}

}  // namespace

FINLORA_CUDA_KERNEL("reduce", reduce)

}  // namespace cuda
}  // namespace finlora
