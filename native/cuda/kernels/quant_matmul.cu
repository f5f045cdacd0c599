// quantizedMatmul and dequantize on the GPU: products with a frozen weight W [rows, cols]
// stored in bitsandbytes' int8 or NF4 format, with the layouts of
// native/cpu/kernels/qmatmul.cc (the reference: the same dequantized values, products
// within f32 rounding). The formats and their arithmetic are
// native/common/quant_format.h's, which the CPU kernels use too.
//
//   quantizedMatmul: out (+)= a · op(W), a [M, K] and out [M, N] contiguous, both f32 or
//     both bf16 (T); transW = 1: op(W) = Wᵀ, K = cols, N = rows (a Linear's forward);
//     transW = 0: op(W) = W, K = rows, N = cols (its input gradient).
//   ints:   [format, M, rows, cols, transW, accumulate, blocksize, nested, nestedBlocksize, T]
//   floats: [offset]
//   ptrs:   [a, q0, q1, q2, q3, q4, out]
//
//   dequantize: out f32 [rows, cols] = W.
//   ints:   [format, rows, cols, blocksize, nested, nestedBlocksize]
//   floats: [offset]
//   ptrs:   [q0, q1, q2, q3, q4, out]
//
// Weight operands q0..q4: those of quant::parse_weight.
//
// Design: W is decoded piece by piece into one scratch buffer of at most kScratchBytes
// (T elements) and each piece goes through one cuBLAS GEMM (cublasGemmEx: bf16 operands
// on tensor cores with f32 accumulation when T is bf16, plain f32 otherwise), so no
// full-size copy of W is made per call. The forward takes W a band of rows at a time
// (each band gives a band of out's columns); the input gradient takes a band of W's
// columns at a time (each gives a band of out's columns too), so every output element
// comes out of one GEMM over the whole K: one rounding to T, and accumulate means
// beta = 1 exactly as on the CPU. A forward with at most 4 rows of a (generation's
// decoding steps) skips the scratch: a GEMV reads the quantized bytes directly. Everything runs on the backend's one stream, so the
// next piece is decoded only after the GEMM that read the last one.
#include <cmath>
#include <string>

#include "kernel.h"
#include "quant_decode.cuh"
#include "quant_format.h"

namespace finlora {
namespace cuda {
namespace {

constexpr size_t kScratchBytes = size_t{32} << 20;

using quant::parse_weight;
using quant::QWeight;

// dst[i * ld + j] = W[r0 + i, c0 + j] for i < nr, j < nc, rounded once to T.
template <typename T>
__global__ void decode(QWeight w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* dst) {
  const int64_t n = nr * nc;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / nc, j = e - i * nc;
    st(dst, e, w.at(r0 + i, c0 + j));
  }
}

// decode, eight consecutive values per thread and one 16- or 32-byte store.
template <typename T>
__global__ void decode8(QWeight w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* dst) {
  const int64_t groups_per_row = nc / 8, groups = nr * groups_per_row;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups; g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = g / groups_per_row, j = (g - i * groups_per_row) * 8;
    float v[8];
    decode8_at(w, r0 + i, c0 + j, v);
    st8(dst + i * nc + j, v);
  }
}

// A Linear's forward for a few rows of a (M <= kGemvM: generation's decoding steps):
// out[m, n] (+)= Σ_k a[m, k] · W[n, k] straight from the quantized bytes, W read once and
// no scratch. A warp takes one row of W (many warps in flight hide the latency of the
// dependent loads: nibbles, then code and scale); each lane decodes eight columns at a
// time and takes their dot products with every row of a; the lanes' f32 partials meet
// in a fixed shuffle order and each output is rounded once to T.
// Up to 4 rows: on an H200 (4096x4096, bf16 a) the GEMV took 17 / 23 / 36 us at 1 / 4 / 8
// rows for double-quantized NF4 (int8: 10 / 17 / 31), decode + GEMM about 32 us throughout.
constexpr int kGemvM = 4, kGemvRows = 1, kGemvWarps = 8;

template <typename T>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv(QWeight w, const T* a, T* out, int M, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t K = w.cols, N = w.rows;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5)) * kGemvRows;
  if (n0 >= N) return;
  float acc[kGemvRows][kGemvM];
#pragma unroll
  for (int r = 0; r < kGemvRows; ++r)
#pragma unroll
    for (int m = 0; m < kGemvM; ++m) acc[r][m] = 0.f;
  for (int64_t k = static_cast<int64_t>(lane) * 8; k < K; k += 256) {
    float wv[kGemvRows][8];
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) {
      if (n0 + r < N) {
        decode8_at(w, n0 + r, k, wv[r]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) wv[r][e] = 0.f;
      }
    }
#pragma unroll
    for (int m = 0; m < kGemvM; ++m) {
      if (m >= M) break;
      float am[8];
      ld8(a + m * K + k, am);
#pragma unroll
      for (int r = 0; r < kGemvRows; ++r)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(am[e], wv[r][e], acc[r][m]);
    }
  }
#pragma unroll
  for (int r = 0; r < kGemvRows; ++r) {
#pragma unroll
    for (int m = 0; m < kGemvM; ++m) {
      if (m >= M) break;
      float v = acc[r][m];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      const int64_t n = n0 + r;
      if (lane == 0 && n < N) {
        const int64_t i = m * N + n;
        st(out, i, accumulate ? v + ld(out, i) : v);
      }
    }
  }
}

template <typename T>
void launch_decode(const QWeight& w, int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* dst) {
  if (nr <= 0 || nc <= 0) return;
  const bool by8 = decodes_by8(w) && c0 % 8 == 0 && nc % 8 == 0 && aligned16(dst);
  if (by8) decode8<T><<<grid_for(nr * nc / 8, 256), 256, 0, stream()>>>(w, r0, nr, c0, nc, dst);
  else decode<T><<<grid_for(nr * nc, 256), 256, 0, stream()>>>(w, r0, nr, c0, nc, dst);
}

// One scratch buffer serves every call; growing it frees the old one (cudaFree waits
// for the device, so no queued GEMM still reads it).
void* scratch(size_t bytes) {
  static void* buf = nullptr;
  static size_t have = 0;
  if (bytes > have) {
    if (buf != nullptr) cudaFree(buf);
    buf = nullptr;
    have = 0;
    if (cudaMalloc(&buf, bytes) != cudaSuccess) return nullptr;
    have = bytes;
  }
  return buf;
}

void dequantize(const KernelArgs& args) {
  QWeight w;
  if (!parse_weight(args, 0, args.ints[0], args.ints[1], args.ints[2], args.ints[3], args.ints[4], args.ints[5], w)) return;
  launch_decode(w, 0, w.rows, 0, w.cols, static_cast<float*>(args.ptrs[5]));
}

bool fits_int(int64_t v) { return v >= 0 && v <= 0x7fffffffLL; }

void quantized_matmul(const KernelArgs& args) {
  const int64_t format = args.ints[0], M = args.ints[1], rows = args.ints[2], cols = args.ints[3];
  const bool trans_w = args.ints[4] != 0, accumulate = args.ints[5] != 0;
  const int64_t dt = trailing_dtype(args, 9);
  if (!compute_dtype_ok(args, dt)) return;
  QWeight w;
  if (!parse_weight(args, 1, format, rows, cols, args.ints[6], args.ints[7], args.ints[8], w)) return;
  const int64_t K = trans_w ? cols : rows, N = trans_w ? rows : cols;
  if (M < 0 || !fits_int(M) || !fits_int(K) || !fits_int(N)) {
    args.error = "sizes must fit in a 32-bit int";
    return;
  }
  const bool bf = dt == BF16;
  const size_t es = bf ? 2 : 4;
  void* a = args.ptrs[0];
  void* out = args.ptrs[6];
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) cudaMemsetAsync(out, 0, static_cast<size_t>(M * N) * es, stream());
    return;
  }
  if (trans_w && M <= kGemvM && decodes_by8(w) && aligned16(a)) {
    const int64_t warps = (N + kGemvRows - 1) / kGemvRows;
    const unsigned blocks = static_cast<unsigned>((warps + kGemvWarps - 1) / kGemvWarps);
    if (bf) gemv<bf16><<<blocks, kGemvWarps * 32, 0, stream()>>>(w, static_cast<const bf16*>(a), static_cast<bf16*>(out), static_cast<int>(M), accumulate);
    else gemv<float><<<blocks, kGemvWarps * 32, 0, stream()>>>(w, static_cast<const float*>(a), static_cast<float*>(out), static_cast<int>(M), accumulate);
    return;
  }
  // A band of W of `span` rows (forward) or columns (gradient), a multiple of 64 when
  // it is not all of them, so the scratch's leading dimension keeps tensor-core alignment.
  const int64_t other = trans_w ? cols : rows, total = trans_w ? rows : cols;
  int64_t span = static_cast<int64_t>(kScratchBytes / es) / other;
  if (span >= total) span = total;
  else span = span >= 64 ? span / 64 * 64 : (span < 1 ? 1 : span);
  void* buf = scratch(static_cast<size_t>(span * other) * es);
  if (buf == nullptr) {
    args.error = "could not allocate the dequantization scratch";
    return;
  }
  const cudaDataType_t type = bf ? CUDA_R_16BF : CUDA_R_32F;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  for (int64_t p0 = 0; p0 < total; p0 += span) {
    const int64_t n = total - p0 < span ? total - p0 : span;
    cublasStatus_t status;
    if (trans_w) {
      // out[:, p0:p0+n] (+)= a · W[p0:p0+n, :]ᵀ; column-major: outᵀ rows p0.. = Wband · aᵀ.
      if (bf) launch_decode(w, p0, n, 0, cols, static_cast<bf16*>(buf));
      else launch_decode(w, p0, n, 0, cols, static_cast<float*>(buf));
      status = cublasGemmEx(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(M), static_cast<int>(K), &alpha,
                            buf, type, static_cast<int>(K), a, type, static_cast<int>(K), &beta,
                            static_cast<char*>(out) + static_cast<size_t>(p0) * es, type, static_cast<int>(N), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT);
    } else {
      // out[:, p0:p0+n] (+)= a · W[:, p0:p0+n]; column-major: outᵀ rows p0.. = Wbandᵀ · aᵀ.
      if (bf) launch_decode(w, 0, rows, p0, n, static_cast<bf16*>(buf));
      else launch_decode(w, 0, rows, p0, n, static_cast<float*>(buf));
      status = cublasGemmEx(cublas(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(M), static_cast<int>(K), &alpha,
                            buf, type, static_cast<int>(n), a, type, static_cast<int>(K), &beta,
                            static_cast<char*>(out) + static_cast<size_t>(p0) * es, type, static_cast<int>(N), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT);
    }
    if (status != CUBLAS_STATUS_SUCCESS) {
      args.error = "cublasGemmEx failed with status " + std::to_string(static_cast<int>(status));
      return;
    }
  }
}

}  // namespace

FINLORA_KERNEL("quantizedMatmul", quantized_matmul)
FINLORA_KERNEL("dequantize", dequantize)

}  // namespace cuda
}  // namespace finlora
