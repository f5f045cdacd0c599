// reduce: sum or max over the middle axis of x viewed as [outer, n, inner] into
// out [outer, inner], as native/cpu/kernels/reduce.cc. Sums accumulate in f64 so long
// reductions keep full f32 accuracy; max propagates NaN; an empty axis gives 0 / -inf.
// x and out are T (f32 or bf16); a bf16 sum is rounded once from f64 through f32.
//
// ints: [op (0 sum, 1 max), outer, n, inner, dtype T]; ptrs: [x T, out T]
//
// inner == 1: one block per row, a block reduction. inner > 1: one thread per output
// column, walking n; neighbouring threads read neighbouring columns, so loads coalesce.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <bool MAX, class T>
__global__ void reduce_rows(const T* x, T* out, int64_t n) {
  const T* row = x + blockIdx.x * n;
  if (MAX) {
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = NanMaxOp()(m, ld(row, i));
    m = block_reduce(m, NanMaxOp());
    if (threadIdx.x == 0) st(out, blockIdx.x, m);
  } else {
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += ld(row, i);
    s = block_reduce(s, SumOp());
    if (threadIdx.x == 0) st(out, blockIdx.x, static_cast<float>(s));
  }
}

template <bool MAX, class T>
__global__ void reduce_columns(const T* x, T* out, int64_t outer, int64_t n, int64_t inner) {
  const int64_t total = outer * inner;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = e / inner, c = e % inner;
    const T* p = x + o * n * inner + c;
    if (MAX) {
      float m = -INFINITY;
      for (int64_t i = 0; i < n; ++i) m = NanMaxOp()(m, ld(p, i * inner));
      st(out, e, m);
    } else {
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += ld(p, i * inner);
      st(out, e, static_cast<float>(s));
    }
  }
}

template <class T>
void launch(bool max, const void* xp, void* outp, int64_t outer, int64_t n, int64_t inner) {
  const T* x = static_cast<const T*>(xp);
  T* out = static_cast<T*>(outp);
  if (inner == 1 && outer <= 0x7fffffff) {
    if (max) reduce_rows<true><<<static_cast<unsigned>(outer), 256, 0, stream()>>>(x, out, n);
    else reduce_rows<false><<<static_cast<unsigned>(outer), 256, 0, stream()>>>(x, out, n);
  } else {
    if (max) reduce_columns<true><<<grid_for(outer * inner, 256), 256, 0, stream()>>>(x, out, outer, n, inner);
    else reduce_columns<false><<<grid_for(outer * inner, 256), 256, 0, stream()>>>(x, out, outer, n, inner);
  }
}

void reduce(const KernelArgs& a) {
  const bool max = a.ints[0] == 1;
  const int64_t outer = a.ints[1], n = a.ints[2], inner = a.ints[3], dt = trailing_dtype(a, 4);
  if (!compute_dtype_ok(a, dt)) return;
  if (outer * inner == 0) return;
  if (dt == BF16) launch<bf16>(max, a.ptrs[0], a.ptrs[1], outer, n, inner);
  else launch<float>(max, a.ptrs[0], a.ptrs[1], outer, n, inner);
}

}  // namespace

FINLORA_KERNEL("reduce", reduce)

}  // namespace cuda
}  // namespace finlora
