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
// A block takes R rows (16, 8 or 4: the most that still give at least 7/8 of the
// multiprocessors a block, and whose s·B fits in shared memory). Each thread walks its
// columns, four at a time through 8- or 16-byte loads where the layout allows, else one
// at a time; it loads A's r values of its columns once for all R rows and forms the
// rows' entries in registers, one f32 sum of squares per row. A is re-read by every
// block (from L1/L2; W's loads are marked streaming so that they do not evict it), so
// its traffic per byte of bf16 W is 2r/R: at r = 8, 16 rows read as many bytes of A as
// of W (the earlier 4 rows per block read 4x), and W is read exactly once. The
// per-thread sums meet in f64 through block_reduce in a fixed order: the same bits run
// after run. A row's sum does not depend on R (only on the columns a thread takes,
// fixed by the path), so R is a matter of speed alone. Both paths take W's values
// through a row reader (dense f32 / bf16, or quantized); a quantized W takes the same
// path (four columns or one per step) as its dequantized f32 copy would, so the two
// routes give the same sums in the same order.
#include <cmath>

#include "kernel.h"
#include "quant_decode.cuh"
#include "quant_format.h"

namespace finlora {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// The fewest rows a block takes; it sets the rank limit (s·B's R·r floats in 48 KiB).
constexpr int kMinRows = 4;
constexpr size_t kCoefBytes = 48 * 1024;

// A's values: four consecutive f32 at a 16-byte aligned address, or one, through the
// read-only cache (every block re-reads them).
__device__ __forceinline__ void ld_cols(const float* p, float (&v)[4]) {
  const float4 q = __ldg(reinterpret_cast<const float4*>(p));
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void ld_cols(const float* p, float (&v)[1]) { v[0] = __ldg(p); }

// W's values, read once: streaming loads (evicted first), so that W passing through
// L1 and L2 does not push A out. Four f32 at a 16-byte aligned address or four bf16 at
// an 8-byte aligned one, or one.
__device__ __forceinline__ void ld_once(const float* p, float (&v)[4]) {
  const float4 q = __ldcs(reinterpret_cast<const float4*>(p));
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void ld_once(const float* p, float (&v)[1]) { v[0] = __ldcs(p); }
__device__ __forceinline__ void ld_once(const bf16* p, float (&v)[4]) {
  const uint2 u = __ldcs(reinterpret_cast<const uint2*>(p));
  v[0] = __uint_as_float(u.x << 16), v[1] = __uint_as_float(u.x & 0xffff0000u);
  v[2] = __uint_as_float(u.y << 16), v[3] = __uint_as_float(u.y & 0xffff0000u);
}
__device__ __forceinline__ void ld_once(const bf16* p, float (&v)[1]) {
  v[0] = __uint_as_float(static_cast<uint32_t>(__ldcs(reinterpret_cast<const unsigned short*>(p))) << 16);
}

// W's values for the kernels: W[r, c .. c + V - 1] (V = 4: c a multiple of 4, the four
// aligned to their size in a dense W).
template <typename W>
struct DenseRows {
  const W* w;
  int64_t cols;
  // Rows row0 .. row0 + nr - 1 of W[:, c .. c + V - 1] into v, one pointer stepping down
  // the rows (sixteen hoisted row pointers would not fit in the register budget).
  template <int R, int V>
  __device__ __forceinline__ void rows_at(int64_t row0, int nr, int64_t c, float (&v)[R][V]) const {
    const W* p = w + row0 * cols + c;
#pragma unroll
    for (int j = 0; j < R; ++j, p += cols) {
      if (j < nr) ld_once(p, v[j]);
    }
  }
};

// The values of QWeight::at, four at a time as decode8_at takes eight: one 4-byte load
// of int8 codes or 2-byte load of nibbles and one scale (c and cols multiples of 8 and
// an NF4 block size that is too, so the four share a block; decodes_by8 holds).
struct QuantRows {
  quant::QWeight w;
  // As DenseRows::rows_at, the flat index stepping down the rows.
  template <int R, int V>
  __device__ __forceinline__ void rows_at(int64_t row0, int nr, int64_t c, float (&v)[R][V]) const {
    int64_t f = row0 * w.cols + c;
#pragma unroll
    for (int j = 0; j < R; ++j, f += w.cols) {
      if (j < nr) at(row0 + j, f, v[j]);
    }
  }
  // Row r's values from flat index f = r·cols + c.
  __device__ __forceinline__ void at(int64_t r, int64_t f, float (&v)[1]) const { v[0] = w.at(r, f - r * w.cols); }
  __device__ __forceinline__ void at(int64_t r, int64_t f, float (&v)[4]) const {
    if (w.format == quant::kInt8) {
      const uint32_t q = *reinterpret_cast<const uint32_t*>(w.cb + f);
      const float s = w.row_scale(r);
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = __fmul_rn(static_cast<float>(static_cast<int8_t>((q >> (8 * e)) & 0xffu)), s);
    } else {
      const uint32_t u = *reinterpret_cast<const uint16_t*>(w.packed + (f >> 1));
      const float s = w.block_scale(f / w.blocksize);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const uint32_t byte = (u >> (8 * k)) & 0xffu;
        v[2 * k] = __fmul_rn(w.code[byte >> 4], s);
        v[2 * k + 1] = __fmul_rn(w.code[byte & 15u], s);
      }
    }
  }
};

// out[i] for the block's R rows from row0, V columns per thread per step (4 through
// vector loads: cols a multiple of 8, W and A aligned; else 1).
//
// coef [r, R] = s·B of the block's rows, column k's R values together (so a thread
// reads them as R/4 float4 broadcasts), 0 past the last row.
template <int R, int V, typename Rows>
__global__ void __launch_bounds__(kThreads, 2) dora_norm_rows(const Rows w, const float* a, const float* b, float* out, int64_t rows,
                                                              int64_t cols, int r, float s) {
  static_assert(R % 4 == 0, "coef is read four rows at a time");
  extern __shared__ float4 coef4[];
  float* coef = reinterpret_cast<float*>(coef4);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * R;
  const int nr = rows - row0 < R ? static_cast<int>(rows - row0) : R;
  for (int i = threadIdx.x; i < R * r; i += blockDim.x) {
    const int k = i / R, j = i - k * R;
    coef[i] = j < nr ? s * b[(row0 + j) * r + k] : 0.f;
  }
  __syncthreads();

  float acc[R];
#pragma unroll
  for (int j = 0; j < R; ++j) acc[j] = 0.f;
  const int64_t step = static_cast<int64_t>(blockDim.x) * V;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * V; c < cols; c += step) {
    float v[R][V];
    // Every row's load is issued before any arithmetic: R loads in flight per thread.
#pragma unroll
    for (int j = 0; j < R; ++j)
#pragma unroll
      for (int e = 0; e < V; ++e) v[j][e] = 0.f;
    w.rows_at(row0, nr, c, v);
    // Two of A's rows per iteration: their loads overlap, and 16 rows x 4 columns stay
    // within the 128 registers that two blocks per multiprocessor allow.
#pragma unroll 2
    for (int k = 0; k < r; ++k) {
      float ak[V];
      ld_cols(a + static_cast<int64_t>(k) * cols + c, ak);
#pragma unroll
      for (int q = 0; q < R / 4; ++q) {
        const float4 cf = coef4[k * (R / 4) + q];
        const float c4[4] = {cf.x, cf.y, cf.z, cf.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int e = 0; e < V; ++e) v[4 * q + i][e] = fmaf(c4[i], ak[e], v[4 * q + i][e]);
      }
    }
#pragma unroll
    for (int j = 0; j < R; ++j)
#pragma unroll
      for (int e = 0; e < V; ++e) acc[j] = fmaf(v[j][e], v[j][e], acc[j]);
  }

#pragma unroll
  for (int j = 0; j < R; ++j) {
    const double total = block_reduce(static_cast<double>(acc[j]), SumOp());
    if (threadIdx.x == 0 && j < nr) out[row0 + j] = static_cast<float>(sqrt(total));
  }
}

int multiprocessors() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n < 1) return 1;
    return n;
  }();
  return count;
}

// The most rows per block that still give at least 7/8 of the multiprocessors a block
// and whose s·B fits: fewer rows per block re-read A more often, too few blocks leave
// multiprocessors (and their share of the memory bandwidth) idle. (A k_proj's 1024
// rows on an H200's 132: 128 blocks of 8 rows, each multiprocessor's bytes in flight as
// with 256 blocks of 4 rows, half the reads of A.)
int rows_per_block(int64_t rows, int64_t r) {
  for (const int R : {16, 8}) {
    const int64_t blocks = (rows + R - 1) / R;
    if (8 * blocks >= 7 * static_cast<int64_t>(multiprocessors()) && static_cast<size_t>(R) * static_cast<size_t>(r) * sizeof(float) <= kCoefBytes)
      return R;
  }
  return kMinRows;
}

// 48 KiB of shared memory per block is what a launch gets without asking; s·B at the
// rank limit takes all of it, beside block_reduce's static array.
template <typename Kernel>
bool allow_shared(const KernelArgs& args, Kernel kernel, size_t bytes) {
  if (bytes + 1024 <= 48 * 1024) return true;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) == cudaSuccess) return true;
  cudaGetLastError();
  args.error = "could not give the kernel " + std::to_string(bytes) + " bytes of shared memory for s·B";
  return false;
}

template <int R, typename Rows>
void launch_rows(const KernelArgs& args, const Rows& w, bool by4, const float* a, const float* b, float* out, int64_t rows, int64_t cols, int r,
                 float s) {
  const unsigned blocks = static_cast<unsigned>((rows + R - 1) / R);
  const size_t shared = static_cast<size_t>(R) * static_cast<size_t>(r) * sizeof(float);
  const auto kernel = by4 && cols % 8 == 0 && aligned16(a) ? dora_norm_rows<R, 4, Rows> : dora_norm_rows<R, 1, Rows>;
  if (!allow_shared(args, kernel, shared)) return;
  kernel<<<blocks, kThreads, shared, stream()>>>(w, a, b, out, rows, cols, r, s);
}

template <typename Rows>
void launch(const KernelArgs& args, const Rows& w, bool by4, const float* a, const float* b, float* out, int64_t rows, int64_t cols, int r, float s) {
  switch (rows_per_block(rows, r)) {
    case 16: launch_rows<16>(args, w, by4, a, b, out, rows, cols, r, s); break;
    case 8: launch_rows<8>(args, w, by4, a, b, out, rows, cols, r, s); break;
    default: launch_rows<kMinRows>(args, w, by4, a, b, out, rows, cols, r, s); break;
  }
}

template <typename W>
void launch_dense(const KernelArgs& args, const W* w, const float* a, const float* b, float* out, int64_t rows, int64_t cols, int r, float s) {
  launch(args, DenseRows<W>{w, cols}, aligned16(w), a, b, out, rows, cols, r, s);
}

// Sets args.error when r is above what the fewest rows per block hold in shared memory.
bool rank_ok(const KernelArgs& args, int64_t r) {
  const int64_t limit = static_cast<int64_t>(kCoefBytes / (kMinRows * sizeof(float)));
  if (r > limit) {
    args.error = "rank " + std::to_string(r) + " is above the kernel's limit of " + std::to_string(limit);
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
  if (!rank_ok(args, r)) return;
  if (rows == 0) return;
  const float* a = static_cast<const float*>(args.ptrs[1]);
  const float* b = static_cast<const float*>(args.ptrs[2]);
  float* out = static_cast<float*>(args.ptrs[3]);
  const float s = static_cast<float>(args.floats[0]);
  if (dtype == BF16) launch_dense(args, static_cast<const bf16*>(args.ptrs[0]), a, b, out, rows, cols, static_cast<int>(r), s);
  else launch_dense(args, static_cast<const float*>(args.ptrs[0]), a, b, out, rows, cols, static_cast<int>(r), s);
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
  if (!rank_ok(args, r)) return;
  if (rows == 0) return;
  const float* a = static_cast<const float*>(args.ptrs[5]);
  const float* b = static_cast<const float*>(args.ptrs[6]);
  float* out = static_cast<float*>(args.ptrs[7]);
  launch(args, q, decodes_by8(q.w), a, b, out, rows, cols, static_cast<int>(r), static_cast<float>(args.floats[1]));
}

}  // namespace

FINLORA_KERNEL("doraNorm", dora_norm)
FINLORA_KERNEL("doraNormQuantized", dora_norm_quantized)

}  // namespace cuda
}  // namespace finlora
