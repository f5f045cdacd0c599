// reduce: sum or max over the middle axis of x viewed as [outer, n, inner] into
// out [outer, inner], as native/cpu/kernels/reduce.cc. Sums accumulate in f64 so long
// reductions keep full f32 accuracy; max propagates NaN; an empty axis gives 0 / -inf.
// x and out are T (f32 or bf16); a bf16 sum is rounded once from f64 through f32.
//
// ints: [op (0 sum, 1 max), outer, n, inner, dtype T]; ptrs: [x T, out T]
//
// inner == 1: one block per row, a block reduction. inner > 1: one thread per output
// column, walking n; neighbouring threads read neighbouring columns, so loads coalesce.
#include <vector>

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

// sumSquares: out[t] = Σ x_t[i]² for several contiguous f32 tensors in one launch (the
// global gradient norm's per-tensor sums), one block per tensor, each square rounded to
// f32 and summed in f64 as reduce_rows sums a row: the values of unary square followed
// by reduce sum. The tensors' pointers and sizes travel as one small table, as adamw's.
//
// ints: [count, n_0, ..., n_{count-1}]; ptrs: [x_0, ..., x_{count-1}, out f32 [count]]
struct SquaresEntry {
  const float* x;
  int64_t n;
};

__global__ void sum_squares_kernel(const SquaresEntry* table, float* out) {
  const SquaresEntry t = table[blockIdx.x];
  double s = 0;
  for (int64_t i = threadIdx.x; i < t.n; i += blockDim.x) {
    const float v = t.x[i];
    s += __fmul_rn(v, v);
  }
  s = block_reduce(s, SumOp());
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<float>(s);
}

void sum_squares(const KernelArgs& k) {
  const int64_t count = k.ints[0];
  if (count <= 0) return;
  if (count > 0x7fffffff) {
    k.error = "sumSquares: too many tensors for one launch";
    return;
  }
  std::vector<SquaresEntry> host(static_cast<size_t>(count));
  for (int64_t t = 0; t < count; ++t) host[t] = {static_cast<const float*>(k.ptrs[t]), k.ints[1 + t]};
  static SquaresEntry* table = nullptr;
  static size_t cap = 0;
  if (host.size() > cap) {
    if (table != nullptr) cudaFree(table);  // waits for the device: the old table may be in use
    table = nullptr;
    cap = 0;
    if (cudaMalloc(&table, host.size() * sizeof(SquaresEntry)) != cudaSuccess) {
      cudaGetLastError();
      k.error = "out of GPU memory for the sumSquares table";
      return;
    }
    cap = host.size();
  }
  cudaMemcpyAsync(table, host.data(), host.size() * sizeof(SquaresEntry), cudaMemcpyHostToDevice, stream());
  sum_squares_kernel<<<static_cast<unsigned>(count), 256, 0, stream()>>>(table, static_cast<float*>(k.ptrs[count]));
}

}  // namespace

FINLORA_KERNEL("reduce", reduce)
FINLORA_KERNEL("sumSquares", sum_squares)

}  // namespace cuda
}  // namespace finlora
