// matmul: batched GEMM through cuBLAS, out[b] = alpha * op(A)[b] op(B)[b] (+ out[b]
// when accumulating), the layout of native/cpu/kernels/matmul.cc: transposition is
// folded into element strides by the caller (src/backend/cuda/cuda.ts), batch strides
// may be 0 (broadcast), out is contiguous [batch, M, N] f32.
//
// ints:   [batch, M, N, K, a_batch_stride, a_row_stride, a_col_stride,
//          b_batch_stride, b_row_stride, b_col_stride, accumulate, dtypeB]
// floats: [alpha]
// ptrs:   [a, b, out]
//
// cuBLAS is column-major, so the row-major product C = op(A) op(B) is computed as
// Cᵀ = op(B)ᵀ op(A)ᵀ: a row-major operand with unit column stride is a column-major
// matrix of its transpose. f32 runs in plain f32 (the handle's math mode leaves TF32
// off), so results match the CPU within f32 rounding. A bf16 B is widened to f32 in a
// scratch buffer first: the contract computes with A exact, which a bf16 tensor-core
// GEMM (A rounded to bf16) would not; that fast path belongs to the bf16 model work.
// Layouts cuBLAS cannot express (neither stride of an operand unit) take a plain
// kernel that reads any strides.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

struct Operand {
  cublasOperation_t op;
  int ld;
  bool ok;
};

// The cuBLAS view of a row-major operand X [R, C] with strides (rs, cs), seen through
// the column-major product as Xᵀ [C, R].
Operand as_transposed(int64_t R, int64_t C, int64_t rs, int64_t cs) {
  const int64_t minC = C > 1 ? C : 1, minR = R > 1 ? R : 1;
  if (cs == 1 && (R == 1 || rs >= minC)) return {CUBLAS_OP_N, static_cast<int>(R == 1 ? minC : rs), true};
  if (rs == 1 && (C == 1 || cs >= minR)) return {CUBLAS_OP_T, static_cast<int>(C == 1 ? minR : cs), true};
  return {CUBLAS_OP_N, 0, false};
}

__global__ void widen_bf16(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = bf16_load(in, i);
}

// Any strides, one thread per output element, f32 accumulation in K order.
__global__ void gemm_strided(const float* a, const float* b, float* c, int64_t batch, int64_t M, int64_t N, int64_t K,
                             int64_t abs, int64_t ars, int64_t acs, int64_t bbs, int64_t brs, int64_t bcs, float alpha,
                             bool accumulate) {
  const int64_t total = batch * M * N;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = e / (M * N), m = (e / N) % M, n = e % N;
    const float* ap = a + p * abs + m * ars;
    const float* bp = b + p * bbs + n * bcs;
    float s = 0;
    for (int64_t k = 0; k < K; ++k) s = fmaf(ap[k * acs], bp[k * brs], s);
    c[e] = accumulate ? c[e] + alpha * s : alpha * s;
  }
}

// Scratch for widened bf16 operands; every use is ordered on the one stream, so one
// buffer serves every call. Growing it frees the old one (cudaFree waits for the device).
float* scratch(size_t elems) {
  static float* buf = nullptr;
  static size_t cap = 0;
  if (elems > cap) {
    if (buf != nullptr) cudaFree(buf);
    buf = nullptr;
    cap = 0;
    if (cudaMalloc(&buf, elems * sizeof(float)) != cudaSuccess) {
      cudaGetLastError();
      buf = nullptr;
      return nullptr;
    }
    cap = elems;
  }
  return buf;
}

void matmul(const KernelArgs& g) {
  const int64_t batch = g.ints[0], M = g.ints[1], N = g.ints[2], K = g.ints[3];
  const int64_t abs = g.ints[4], ars = g.ints[5], acs = g.ints[6];
  const int64_t bbs = g.ints[7], brs = g.ints[8], bcs = g.ints[9];
  const bool accumulate = g.ints[10] != 0;
  const int64_t dtype_b = g.ints[11];
  const float alpha = static_cast<float>(g.floats[0]);
  if (dtype_b != F32 && dtype_b != BF16) {
    g.error = "b must be f32 or bf16";
    return;
  }
  if (batch == 0 || M == 0 || N == 0) return;
  const float* a = static_cast<const float*>(g.ptrs[0]);
  float* c = static_cast<float*>(g.ptrs[2]);
  if (K == 0) {  // an empty sum: out = 0, or unchanged when accumulating
    if (!accumulate) cudaMemsetAsync(c, 0, static_cast<size_t>(batch * M * N) * sizeof(float), stream());
    return;
  }
  const float* b = static_cast<const float*>(g.ptrs[1]);
  if (dtype_b == BF16) {
    const int64_t span = (batch - 1) * bbs + (K - 1) * brs + (N - 1) * bcs + 1;
    float* wide = scratch(static_cast<size_t>(span));
    if (wide == nullptr) {
      g.error = "out of GPU memory widening a bf16 operand";
      return;
    }
    widen_bf16<<<grid_for(span, 256), 256, 0, stream()>>>(static_cast<const uint16_t*>(g.ptrs[1]), wide, span);
    b = wide;
  }
  // Cᵀ [N, M] = op(B)ᵀ [N, K] · op(A)ᵀ [K, M]
  const Operand ob = as_transposed(K, N, brs, bcs);
  const Operand oa = as_transposed(M, K, ars, acs);
  const bool fits = M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31);
  if (ob.ok && oa.ok && fits) {
    const float beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t st = cublasSgemmStridedBatched(cublas(), ob.op, oa.op, static_cast<int>(N), static_cast<int>(M),
                                                  static_cast<int>(K), &alpha, b, ob.ld, bbs, a, oa.ld, abs, &beta, c,
                                                  static_cast<int>(N), M * N, static_cast<int>(batch));
    if (st != CUBLAS_STATUS_SUCCESS) g.error = "cublasSgemmStridedBatched failed with status " + std::to_string(st);
    return;
  }
  gemm_strided<<<grid_for(batch * M * N, 256), 256, 0, stream()>>>(a, b, c, batch, M, N, K, abs, ars, acs, bbs, brs, bcs,
                                                                   alpha, accumulate);
}

}  // namespace

FINLORA_CUDA_KERNEL("matmul", matmul)

}  // namespace cuda
}  // namespace finlora
