// doraNorm on the GPU: DoRA's weight norm in the direct form, as
// native/cpu/kernels/dora_norm.cc (Liu et al. 2024; src/adapters/lora/dora.ts),
//
//   out[i] = ‖W_i + s·(B·A)_i‖₂,
//
// one kernel per layer and step with nothing read back to the host (the low-rank
// identity needs a host-side cancellation check, which would stall the stream).
//
// doraNorm ints: [rows, cols, r, dtype of w (0 f32, 1 bf16)]; floats: [s]
//   ptrs: [w [rows, cols], a f32 [r, cols], b f32 [rows, r], out f32 [rows] (=)]
//
// A block takes kRows rows: each thread walks columns c, c + blockDim, ..., loads A's r
// values of its column once for all kRows rows (A is re-read per block, so sharing it
// across rows cuts that traffic kRows-fold; W is read exactly once), forms the rows'
// entries in registers and keeps one f32 sum of squares per row. The per-thread sums
// meet in f64 through block_reduce, in a fixed order: the result is the same run after
// run.
#include <cmath>

#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

constexpr int kRows = 8;
constexpr int kThreads = 256;

template <typename W>
__global__ void __launch_bounds__(kThreads) dora_norm_rows(const W* w, const float* a, const float* b, float* out, int64_t rows,
                                                           int64_t cols, int r, float s) {
  extern __shared__ float coef[];  // [kRows, r]: s·B of this block's rows, 0 past the last row
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int nr = rows - row0 < kRows ? static_cast<int>(rows - row0) : kRows;
  for (int i = threadIdx.x; i < kRows * r; i += blockDim.x) {
    const int j = i / r, k = i - j * r;
    coef[i] = j < nr ? s * b[(row0 + j) * r + k] : 0.f;
  }
  __syncthreads();
  float acc[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) acc[j] = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) v[j] = j < nr ? ld(w, (row0 + j) * cols + c) : 0.f;
    for (int k = 0; k < r; ++k) {
      const float ak = a[static_cast<int64_t>(k) * cols + c];
#pragma unroll
      for (int j = 0; j < kRows; ++j) v[j] = fmaf(coef[j * r + k], ak, v[j]);
    }
#pragma unroll
    for (int j = 0; j < kRows; ++j) acc[j] = fmaf(v[j], v[j], acc[j]);
  }
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    const double total = block_reduce(static_cast<double>(acc[j]), SumOp());
    if (threadIdx.x == 0 && j < nr) out[row0 + j] = static_cast<float>(sqrt(total));
  }
}

void dora_norm(const KernelArgs& args) {
  const int64_t rows = args.ints[0], cols = args.ints[1], r = args.ints[2], dtype = args.ints[3];
  if (dtype != F32 && dtype != BF16) {
    args.error = "w must be f32 or bf16";
    return;
  }
  if (rows < 0 || cols < 0 || r < 0) {
    args.error = "negative size";
    return;
  }
  const size_t shared = static_cast<size_t>(kRows) * static_cast<size_t>(r) * sizeof(float);
  if (shared > 48 * 1024) {
    args.error = "rank " + std::to_string(r) + " is above the kernel's limit of " + std::to_string(48 * 1024 / (kRows * 4));
    return;
  }
  if (rows == 0) return;
  const unsigned blocks = static_cast<unsigned>((rows + kRows - 1) / kRows);
  const float* a = static_cast<const float*>(args.ptrs[1]);
  const float* b = static_cast<const float*>(args.ptrs[2]);
  float* out = static_cast<float*>(args.ptrs[3]);
  const float s = static_cast<float>(args.floats[0]);
  if (dtype == BF16) {
    dora_norm_rows<bf16><<<blocks, kThreads, shared, stream()>>>(static_cast<const bf16*>(args.ptrs[0]), a, b, out, rows, cols,
                                                                 static_cast<int>(r), s);
  } else {
    dora_norm_rows<float><<<blocks, kThreads, shared, stream()>>>(static_cast<const float*>(args.ptrs[0]), a, b, out, rows, cols,
                                                                  static_cast<int>(r), s);
  }
}

}  // namespace

FINLORA_CUDA_KERNEL("doraNorm", dora_norm)

}  // namespace cuda
}  // namespace finlora
