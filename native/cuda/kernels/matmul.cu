// matmul: batched GEMM through cuBLAS, out[b] = alpha * op(A)[b] op(B)[b] (+ out[b]
// when accumulating), the layout of native/cpu/kernels/matmul.cc: transposition is
// folded into element strides by the caller (src/backend/cuda/cuda.ts), batch strides
// may be 0 (broadcast), out is contiguous [batch, M, N].
//
// ints:   [batch, M, N, K, a_batch_stride, a_row_stride, a_col_stride,
//          b_batch_stride, b_row_stride, b_col_stride, accumulate, dtypeB, dtype T of a and out]
// floats: [alpha]
// ptrs:   [a, b, out]
//
// Two dtype combinations: (a f32, b f32 or bf16, out f32), below, and (a, b, out all
// bf16), the tensor-core path: cuBLASLt with f32 accumulation (CUBLAS_COMPUTE_32F),
// alpha and beta (accumulate) in f32 and one rounding of each output to bf16, as
// PyTorch's bf16 matmul. Its descriptors and the heuristic's algorithm are cached per
// shape, layout and alignment, so a training step asks the heuristic once per shape.
//
// cuBLAS is column-major, so the row-major product C = op(A) op(B) is computed as
// Cᵀ = op(B)ᵀ op(A)ᵀ: a row-major operand with unit column stride is a column-major
// matrix of its transpose. f32 runs in plain f32 (the handle's math mode leaves TF32
// off), so results match the CPU within f32 rounding. With an f32 A, a bf16 B is
// widened to f32 in a scratch buffer first: that combination computes with A exact,
// which a bf16 tensor-core GEMM (A rounded to bf16) would not. The bf16 path reads a
// weight shared by a batch of rows one after another as one GEMM of batch·M rows.
// Layouts cuBLAS cannot express (neither stride of an operand unit) take a plain
// kernel that reads any strides, as do bf16 shapes cuBLASLt has no algorithm for.
#include <array>
#include <map>

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
template <class TA, class TB, class TC>
__global__ void gemm_strided(const TA* a, const TB* b, TC* c, int64_t batch, int64_t M, int64_t N, int64_t K,
                             int64_t abs, int64_t ars, int64_t acs, int64_t bbs, int64_t brs, int64_t bcs, float alpha,
                             bool accumulate) {
  const int64_t total = batch * M * N;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = e / (M * N), m = (e / N) % M, n = e % N;
    const TA* ap = a + p * abs + m * ars;
    const TB* bp = b + p * bbs + n * bcs;
    float s = 0;
    for (int64_t k = 0; k < K; ++k) s = fmaf(ld(ap, k * acs), ld(bp, k * brs), s);
    st(c, e, accumulate ? ld(c, e) + alpha * s : alpha * s);
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

// The largest power of two (up to 256) dividing the address: cuBLASLt picks only
// algorithms whose alignment needs the operands meet.
int64_t alignment(const void* p) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  int64_t a = 256;
  while (a > 2 && (u % static_cast<uintptr_t>(a)) != 0) a >>= 1;
  return a;
}

// A bf16 GEMM as cuBLASLt sees it (column-major): D [n, m] = alpha op(A) op(B) + beta C,
// with A the caller's b and B the caller's a (see the header), C = D = out.
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool ok = false;
};

// [opA, opB, n, m, k, lda, ldb, batch, strideA, strideB, beta, workspace, alignA, alignB, alignC]
using LtKey = std::array<int64_t, 15>;

void destroy(LtPlan& p) {
  if (p.la) cublasLtMatrixLayoutDestroy(p.la);
  if (p.lb) cublasLtMatrixLayoutDestroy(p.lb);
  if (p.lc) cublasLtMatrixLayoutDestroy(p.lc);
  if (p.desc) cublasLtMatmulDescDestroy(p.desc);
  p = LtPlan{};
}

cublasLtMatrixLayout_t layout(bool trans, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  // A transposed operand is stored as its transpose: cols x rows.
  cublasLtMatrixLayout_t l = nullptr;
  if (cublasLtMatrixLayoutCreate(&l, CUDA_R_16BF, static_cast<uint64_t>(trans ? cols : rows),
                                 static_cast<uint64_t>(trans ? rows : cols), ld) != CUBLAS_STATUS_SUCCESS)
    return nullptr;
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
    cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
  }
  return l;
}

// Builds the plan for a key: descriptors, then the heuristic's first algorithm.
LtPlan make_plan(const LtKey& k, size_t workspace_bytes) {
  const cublasOperation_t opa = static_cast<cublasOperation_t>(k[0]), opb = static_cast<cublasOperation_t>(k[1]);
  const int64_t n = k[2], m = k[3], kk = k[4], lda = k[5], ldb = k[6], batch = k[7], sa = k[8], sb = k[9];
  LtPlan p;
  if (cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) {
    p.desc = nullptr;
    return p;
  }
  cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa);
  cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb);
  // op(A) is n x kk, op(B) is kk x m, C is n x m.
  p.la = layout(opa == CUBLAS_OP_T, n, kk, lda, batch, sa);
  p.lb = layout(opb == CUBLAS_OP_T, kk, m, ldb, batch, sb);
  p.lc = layout(false, n, m, n, batch, n * m);
  if (!p.la || !p.lb || !p.lc) {
    destroy(p);
    return p;
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) {
    destroy(p);
    return p;
  }
  const uint64_t ws = workspace_bytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  const uint32_t align_a = static_cast<uint32_t>(k[12]), align_b = static_cast<uint32_t>(k[13]),
                 align_c = static_cast<uint32_t>(k[14]);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c);
  // Split-K only with its partial sums reduced in f32 (in the workspace): the in-place
  // and output-type schemes add the parts in bf16 (several roundings of each output)
  // and the in-place one in whatever order its atomics land.
  const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reductions, sizeof reductions);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(cublas_lt(), p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    destroy(p);
    return p;
  }
  p.algo = result.algo;
  p.workspace = result.workspaceSize;
  p.ok = true;
  return p;
}

// Plans by key. A training step uses a few dozen shapes; past kMaxPlans (a workload
// whose shapes keep changing) the cache starts over rather than grow without bound.
constexpr size_t kMaxPlans = 512;

const LtPlan& plan_for(const LtKey& k, size_t workspace_bytes) {
  static std::map<LtKey, LtPlan> plans;
  auto it = plans.find(k);
  if (it != plans.end()) return it->second;
  if (plans.size() >= kMaxPlans) {
    for (auto& e : plans) destroy(e.second);
    plans.clear();
  }
  return plans.emplace(k, make_plan(k, workspace_bytes)).first->second;
}

// The tensor-core path; false when cuBLASLt has no algorithm for the layout (the
// caller then runs the plain kernel).
bool lt_matmul(const KernelArgs& g, const bf16* a, const bf16* b, bf16* c, int64_t batch, int64_t M, int64_t N, int64_t K,
               int64_t abs, int64_t ars, int64_t acs, int64_t bbs, int64_t brs, int64_t bcs, float alpha, bool accumulate) {
  // A weight shared by every batch entry (b's batch stride 0) with a's entries one
  // after another in rows (a Linear over [B, T, K]) is a single GEMM of batch·M rows.
  if (batch > 1 && bbs == 0 && acs == 1 && abs == M * ars) {
    M *= batch;
    batch = 1;
    abs = 0;
  }
  const Operand ob = as_transposed(K, N, brs, bcs);
  const Operand oa = as_transposed(M, K, ars, acs);
  if (!ob.ok || !oa.ok) return false;
  size_t ws_bytes = 0;
  void* ws = gemm_workspace(&ws_bytes);
  const LtKey key{ob.op, oa.op, N, M, K, ob.ld, oa.ld, batch, batch > 1 ? bbs : 0, batch > 1 ? abs : 0, accumulate ? 1 : 0,
                  static_cast<int64_t>(ws_bytes), alignment(b), alignment(a), alignment(c)};
  const LtPlan& p = plan_for(key, ws_bytes);
  if (!p.ok) return false;
  const float beta = accumulate ? 1.0f : 0.0f;
  const cublasStatus_t st = cublasLtMatmul(cublas_lt(), p.desc, &alpha, b, p.la, a, p.lb, &beta, c, p.lc, c, p.lc, &p.algo,
                                           p.workspace > 0 ? ws : nullptr, p.workspace, stream());
  if (st != CUBLAS_STATUS_SUCCESS) {
    g.error = "cublasLtMatmul failed with status " + std::to_string(st);
    return true;  // reported; nothing to fall back to after a launch error
  }
  return true;
}

void matmul_bf16(const KernelArgs& g, int64_t batch, int64_t M, int64_t N, int64_t K, int64_t abs, int64_t ars,
                 int64_t acs, int64_t bbs, int64_t brs, int64_t bcs, float alpha, bool accumulate) {
  const bf16* a = static_cast<const bf16*>(g.ptrs[0]);
  const bf16* b = static_cast<const bf16*>(g.ptrs[1]);
  bf16* c = static_cast<bf16*>(g.ptrs[2]);
  if (K == 0) {  // an empty sum: out = 0, or unchanged when accumulating
    if (!accumulate) cudaMemsetAsync(c, 0, static_cast<size_t>(batch * M * N) * sizeof(bf16), stream());
    return;
  }
  const bool fits = M * batch < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31) && batch < (1LL << 31);
  if (fits && lt_matmul(g, a, b, c, batch, M, N, K, abs, ars, acs, bbs, brs, bcs, alpha, accumulate)) return;
  gemm_strided<<<grid_for(batch * M * N, 256), 256, 0, stream()>>>(a, b, c, batch, M, N, K, abs, ars, acs, bbs, brs, bcs,
                                                                   alpha, accumulate);
}

void matmul(const KernelArgs& g) {
  const int64_t batch = g.ints[0], M = g.ints[1], N = g.ints[2], K = g.ints[3];
  const int64_t abs = g.ints[4], ars = g.ints[5], acs = g.ints[6];
  const int64_t bbs = g.ints[7], brs = g.ints[8], bcs = g.ints[9];
  const bool accumulate = g.ints[10] != 0;
  const int64_t dtype_b = g.ints[11], dtype_a = trailing_dtype(g, 12);
  const float alpha = static_cast<float>(g.floats[0]);
  if (!compute_dtype_ok(g, dtype_a)) return;
  if (dtype_b != F32 && dtype_b != BF16) {
    g.error = "b must be f32 or bf16";
    return;
  }
  if (dtype_a == BF16 && dtype_b != BF16) {
    g.error = "a bf16 a needs a bf16 b (an f32 b takes a, cast to f32)";
    return;
  }
  if (batch == 0 || M == 0 || N == 0) return;
  if (dtype_a == BF16) {
    matmul_bf16(g, batch, M, N, K, abs, ars, acs, bbs, brs, bcs, alpha, accumulate);
    return;
  }
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

FINLORA_KERNEL("matmul", matmul)

}  // namespace cuda
}  // namespace finlora
