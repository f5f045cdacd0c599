// Quantization at load time into bitsandbytes' formats on the GPU, giving the same codes
// and absmax values as native/cpu/kernels/quantize.cc (the reference; bitsandbytes'
// backends/default/ops.py numerics):
//
// quantizeInt8: w [rows, cols] (f32, bf16 or f16) -> cb int8 [rows, cols], scb f32 [rows].
//   Each value is first rounded to f16, scb[r] = max_c |w[r, c]|, cb =
//   round_half_even(w · (127 / scb[r])) clamped to ±127; an all-zero row gives scb 0 and
//   zero codes. One block per row.
//   ints: [rows, cols, dtype]   ptrs: [w, cb, scb]
//
// quantizeBlockwise: x [n] (f32, bf16 or f16) in blocks of `blocksize`; per block
//   absmax = max |x|; scaled = clamp(x · (1 / max(absmax, 1e-38)), -1, 1) (a partial
//   last block divides by its clamped absmax and stores that); the index is the number
//   of code midpoints strictly below the scaled value (torch.bucketize). pack4 stores two
//   indices per byte, element 2i in the high nibble, an odd count padded with the index
//   of 0. One warp per block.
//   ints: [n, dtype, codeSize, blocksize, pack4]   ptrs: [x, code, q, absmax]
//
// The per-value arithmetic is native/common/quant_format.h's, which the CPU kernel uses
// too: comparisons as std::min / std::max expand (a NaN never wins a max and clamps to
// -1 / -127), every division and product a single IEEE operation, so the codes match
// the CPU's bit for bit.
#include <string>

#include "kernel.h"
#include "quant_format.h"

namespace finlora {
namespace cuda {
namespace {

__device__ __forceinline__ float load_any(const void* p, int64_t dtype, int64_t i) {
  if (dtype == F32) return static_cast<const float*>(p)[i];
  if (dtype == BF16) return bf16_load(static_cast<const uint16_t*>(p), i);
  return f16_load(static_cast<const uint16_t*>(p), i);
}

using quant::std_max;

struct StdMaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return std_max(a, b); }
};

__global__ void quantize_int8_rows(const void* w, int64_t dtype, int64_t cols, int8_t* cb, float* scb) {
  const int64_t row = blockIdx.x;
  float am = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float h = __half2float(__float2half_rn(load_any(w, dtype, row * cols + c)));
    am = std_max(am, fabsf(h));
  }
  // The max of the non-NaN values whatever the order: the CPU's sequential scan's result.
  am = block_reduce(am, StdMaxOp());
  if (threadIdx.x == 0) scb[row] = am;
  int8_t* q = cb + row * cols;
  if (am == 0.0f) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) q[c] = 0;
    return;
  }
  const float scale = quant::int8_scale(am);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float h = __half2float(__float2half_rn(load_any(w, dtype, row * cols + c)));
    q[c] = quant::int8_code(h, scale);
  }
}

void quantize_int8(const KernelArgs& args) {
  quant::Int8Job job;
  if (!quant::parse_quantize_int8(args, job)) return;
  const int64_t rows = job.rows, cols = job.cols, dtype = job.dtype;
  if (rows == 0) return;
  const int threads = cols >= 2048 ? 512 : cols >= 256 ? 256 : 64;
  quantize_int8_rows<<<static_cast<unsigned>(rows), threads, 0, stream()>>>(args.ptrs[0], dtype, cols, static_cast<int8_t*>(args.ptrs[1]),
                                                                             static_cast<float*>(args.ptrs[2]));
}

constexpr int kWarps = 8;

__global__ void quantize_blocks(const void* x, int64_t dtype, const float* code, int nb, uint8_t* q, float* absmax, int64_t n,
                                int64_t bs, bool pack4) {
  __shared__ float bounds[255];
  for (int i = threadIdx.x; i < nb; i += blockDim.x) bounds[i] = quant::code_midpoint(code, i);
  __syncthreads();
  const int zero_index = quant::bucket(bounds, nb, 0.0f);
  const int lane = threadIdx.x & 31;
  const int64_t blocks = (n + bs - 1) / bs;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= blocks) return;
  const int64_t start = b * bs, len = n - start < bs ? n - start : bs;
  float am = 0.0f;
  for (int64_t i = lane; i < len; i += 32) am = std_max(am, fabsf(load_any(x, dtype, start + i)));
  for (int o = 16; o > 0; o >>= 1) am = std_max(am, __shfl_xor_sync(0xffffffffu, am, o));
  const bool partial = len < bs;
  const float clamped = std_max(am, 1e-38f);
  if (lane == 0) absmax[b] = partial ? clamped : am;
  const float inv = __fdiv_rn(1.0f, clamped);
  auto index = [&](int64_t i) { return quant::bucket(bounds, nb, quant::block_scaled(load_any(x, dtype, start + i), clamped, inv, partial)); };
  if (!pack4) {
    for (int64_t i = lane; i < len; i += 32) q[start + i] = static_cast<uint8_t>(index(i));
    return;
  }
  // blocksize is even, so a block's pairs are whole bytes; only the very last may be half.
  for (int64_t i = 2 * lane; i < len; i += 64) {
    const int hi = index(i), lo = i + 1 < len ? index(i + 1) : zero_index;
    q[(start + i) >> 1] = static_cast<uint8_t>((hi << 4) | lo);
  }
}

void quantize_blockwise(const KernelArgs& args) {
  quant::BlockwiseJob job;
  if (!quant::parse_quantize_blockwise(args, job)) return;
  const int64_t n = job.n, dtype = job.dtype, code_size = job.code_size, bs = job.blocksize;
  const bool pack4 = job.pack4;
  if (n == 0) return;
  const int64_t blocks = (n + bs - 1) / bs;
  const int64_t grid = (blocks + kWarps - 1) / kWarps;
  if (grid > 0x7fffffffLL) {
    args.error = "quantizeBlockwise: too many blocks";
    return;
  }
  quantize_blocks<<<static_cast<unsigned>(grid), kWarps * 32, 0, stream()>>>(
      args.ptrs[0], dtype, static_cast<const float*>(args.ptrs[1]), static_cast<int>(code_size - 1), static_cast<uint8_t*>(args.ptrs[2]),
      static_cast<float*>(args.ptrs[3]), n, bs, pack4);
}

}  // namespace

FINLORA_KERNEL("quantizeInt8", quantize_int8)
FINLORA_KERNEL("quantizeBlockwise", quantize_blockwise)

}  // namespace cuda
}  // namespace finlora
