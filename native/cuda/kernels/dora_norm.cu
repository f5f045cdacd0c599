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
// doraNormQuantized: the same norm over a W held in bitsandbytes' int8 or NF4 format
// (native/common/quant_format.h), decoded as it is read: a quantized base's norm
// without an f32 copy of W (for an 8B q_proj, 16 MiB of int8 or 8 MiB of nibbles read
// instead of 64 MiB written by dequantize and read back).
//   ints:   [format, rows, cols, blocksize, nested, nestedBlocksize, r]
//   floats: [offset, s]
//   ptrs:   [q0, q1, q2, q3, q4, a f32 [r, cols], b f32 [rows, r], out f32 [rows] (=)]
//   (q0..q4: the weight operands of quant::parse_weight)
//
// A block takes kRows rows: each thread walks its columns (eight at a time through
// 16-byte loads where the layout allows, else one at a time), loads A's r values of a
// column once for all kRows rows (A is re-read per block, so sharing it across rows
// cuts that traffic kRows-fold; W is read exactly once), forms the rows' entries in
// registers and keeps one f32 sum of squares per row. The per-thread sums
// meet in f64 through block_reduce, in a fixed order: the result is the same run after
// run. Both kernels take W's values through a row reader (dense f32 / bf16, or
// quantized); a quantized W takes the same path (eight columns or one per step) as its
// dequantized f32 copy would, so the two routes give the same sums in the same order.
#include <cmath>

#include "kernel.h"
#include "quant_decode.cuh"
#include "quant_format.h"

namespace finlora {
namespace cuda {
namespace {

constexpr int kRows = 4;
constexpr int kThreads = 256;

// W's values for the kernels: W[r, c], and W[r, c .. c + 7] (c a multiple of 8, the
// eight 16-byte aligned in a dense W).
template <typename W>
struct DenseRows {
  const W* w;
  int64_t cols;
  __device__ __forceinline__ float at(int64_t r, int64_t c) const { return ld(w, r * cols + c); }
  __device__ __forceinline__ void at8(int64_t r, int64_t c, float (&v)[8]) const { ld8(w + r * cols + c, v); }
};

struct QuantRows {
  quant::QWeight w;
  __device__ __forceinline__ float at(int64_t r, int64_t c) const { return w.at(r, c); }
  __device__ __forceinline__ void at8(int64_t r, int64_t c, float (&v)[8]) const { decode8_at(w, r, c, v); }
};

// A block's kRows rows from row0: coef [kRows, r] = s·B of those rows, 0 past the last
// row. Returns how many of the rows exist.
__device__ __forceinline__ int load_coef(const float* b, int64_t rows, int64_t row0, int r, float s, float* coef) {
  const int nr = rows - row0 < kRows ? static_cast<int>(rows - row0) : kRows;
  for (int i = threadIdx.x; i < kRows * r; i += blockDim.x) {
    const int j = i / r, k = i - j * r;
    coef[i] = j < nr ? s * b[(row0 + j) * r + k] : 0.f;
  }
  __syncthreads();
  return nr;
}

// out[row0 + j] = the square root of the block's sum of acc[j], summed in f64.
__device__ __forceinline__ void store_norms(const float (&acc)[kRows], int64_t row0, int nr, float* out) {
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    const double total = block_reduce(static_cast<double>(acc[j]), SumOp());
    if (threadIdx.x == 0 && j < nr) out[row0 + j] = static_cast<float>(sqrt(total));
  }
}

template <typename Rows>
__global__ void __launch_bounds__(kThreads) dora_norm_rows(const Rows w, const float* a, const float* b, float* out, int64_t rows,
                                                           int64_t cols, int r, float s) {
  extern __shared__ float coef[];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int nr = load_coef(b, rows, row0, r, s, coef);
  float acc[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) acc[j] = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) v[j] = j < nr ? w.at(row0 + j, c) : 0.f;
    for (int k = 0; k < r; ++k) {
      const float ak = a[static_cast<int64_t>(k) * cols + c];
#pragma unroll
      for (int j = 0; j < kRows; ++j) v[j] = fmaf(coef[j * r + k], ak, v[j]);
    }
#pragma unroll
    for (int j = 0; j < kRows; ++j) acc[j] = fmaf(v[j], v[j], acc[j]);
  }
  store_norms(acc, row0, nr, out);
}

// The same sums with each thread taking eight consecutive columns per step through
// 16-byte loads (cols a multiple of 8, W and A 16-byte aligned; a quantized W one load
// of codes per eight): four times the bytes in flight per load, which is what a
// one-wave grid needs to approach the memory bound.
template <typename Rows>
__global__ void __launch_bounds__(kThreads) dora_norm_rows8(const Rows w, const float* a, const float* b, float* out, int64_t rows,
                                                            int64_t cols, int r, float s) {
  extern __shared__ float coef[];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int nr = load_coef(b, rows, row0, r, s, coef);
  float acc[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) acc[j] = 0.f;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * 8; c < cols; c += static_cast<int64_t>(blockDim.x) * 8) {
    float v[kRows][8];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if (j < nr) {
        w.at8(row0 + j, c, v[j]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[j][e] = 0.f;
      }
    }
    for (int k = 0; k < r; ++k) {
      float ak[8];
      ld8(a + static_cast<int64_t>(k) * cols + c, ak);
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        const float cf = coef[j * r + k];
#pragma unroll
        for (int e = 0; e < 8; ++e) v[j][e] = fmaf(cf, ak[e], v[j][e]);
      }
    }
#pragma unroll
    for (int j = 0; j < kRows; ++j)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[j] = fmaf(v[j][e], v[j][e], acc[j]);
  }
  store_norms(acc, row0, nr, out);
}

template <typename Rows>
void launch(const Rows& w, bool by8, const float* a, const float* b, float* out, int64_t rows, int64_t cols, int r, float s, size_t shared) {
  const unsigned blocks = static_cast<unsigned>((rows + kRows - 1) / kRows);
  if (by8 && cols % 8 == 0 && aligned16(a)) {
    dora_norm_rows8<Rows><<<blocks, kThreads, shared, stream()>>>(w, a, b, out, rows, cols, r, s);
  } else {
    dora_norm_rows<Rows><<<blocks, kThreads, shared, stream()>>>(w, a, b, out, rows, cols, r, s);
  }
}

template <typename W>
void launch_dense(const W* w, const float* a, const float* b, float* out, int64_t rows, int64_t cols, int r, float s, size_t shared) {
  launch(DenseRows<W>{w, cols}, aligned16(w), a, b, out, rows, cols, r, s, shared);
}

// s·B's rows in shared memory: kRows · r floats. Sets args.error when r is out of range.
bool coef_bytes(const KernelArgs& args, int64_t r, size_t& shared) {
  shared = static_cast<size_t>(kRows) * static_cast<size_t>(r) * sizeof(float);
  if (shared > 48 * 1024) {
    args.error = "rank " + std::to_string(r) + " is above the kernel's limit of " + std::to_string(48 * 1024 / (kRows * 4));
    return false;
  }
  return true;
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
  size_t shared = 0;
  if (!coef_bytes(args, r, shared)) return;
  if (rows == 0) return;
  const float* a = static_cast<const float*>(args.ptrs[1]);
  const float* b = static_cast<const float*>(args.ptrs[2]);
  float* out = static_cast<float*>(args.ptrs[3]);
  const float s = static_cast<float>(args.floats[0]);
  if (dtype == BF16) launch_dense(static_cast<const bf16*>(args.ptrs[0]), a, b, out, rows, cols, static_cast<int>(r), s, shared);
  else launch_dense(static_cast<const float*>(args.ptrs[0]), a, b, out, rows, cols, static_cast<int>(r), s, shared);
}

void dora_norm_quantized(const KernelArgs& args) {
  if (args.ints.size() != 7 || args.floats.size() != 2 || args.ptrs.size() != 8) {
    args.error = "doraNormQuantized: expected 7 ints, 2 floats and 8 buffers";
    return;
  }
  QuantRows q;
  if (!quant::parse_weight(args, 0, args.ints[0], args.ints[1], args.ints[2], args.ints[3], args.ints[4], args.ints[5], q.w)) return;
  const int64_t rows = q.w.rows, cols = q.w.cols, r = args.ints[6];
  if (r < 0) {
    args.error = "negative rank";
    return;
  }
  size_t shared = 0;
  if (!coef_bytes(args, r, shared)) return;
  if (rows == 0) return;
  const float* a = static_cast<const float*>(args.ptrs[5]);
  const float* b = static_cast<const float*>(args.ptrs[6]);
  float* out = static_cast<float*>(args.ptrs[7]);
  launch(q, decodes_by8(q.w), a, b, out, rows, cols, static_cast<int>(r), static_cast<float>(args.floats[1]), shared);
}

}  // namespace

FINLORA_KERNEL("doraNorm", dora_norm)
FINLORA_KERNEL("doraNormQuantized", dora_norm_quantized)

}  // namespace cuda
}  // namespace finlora
