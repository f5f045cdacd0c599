// attention and its backward: scaled dot-product attention with grouped-query heads,
// the contract of src/backend/kernels.ts. A plain version: one block per query row
// (forward, dq) or per key row (dk, dv), the row's scores in shared memory. It keeps
// no T x S matrix in device memory but reads K and V once per query row, so it is
// correct rather than fast; the flash-style tiled kernels replace it later and are
// checked against it.
//
// attention ints: [B, Hq, Hkv, T, S, D, causal, has_mask]; floats: [scale]
//   ptrs: [q [B,Hq,T,D], k, v [B,Hkv,S,D], keyMask [B,S] (q when absent), out [B,Hq,T,D] (=), lse [B,Hq,T] (=)]
// attentionBackward ints, floats: the same
//   ptrs: [q, k, v, keyMask, out, lse, dout, dq (=), dk (=), dv (=)]
//
// Query t attends key s when s <= t + (S - T) (causal) and keyMask[b, s] != 0. A row
// with every key masked gives zeros and lse = -inf, and passes no gradient.
// Backward (FlashAttention-2's formulation, Dao 2023): P = exp(scale·QKᵀ − lse),
// Dt = rowsum(dO ∘ O), dS = P ∘ (dO·Vᵀ − Dt); dQ = scale·dS·K, dK = scale·dSᵀ·Q, dV = Pᵀ·dO,
// with dK and dV summed over the query heads that share a kv head.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

struct Dims {
  int64_t B, Hq, Hkv, T, S, D;
  bool causal, has_mask;
  float scale;
};

__device__ __forceinline__ bool visible(const Dims& d, const float* mask, int64_t b, int64_t t, int64_t s) {
  if (d.causal && s > t + (d.S - d.T)) return false;
  return !d.has_mask || mask[b * d.S + s] != 0.0f;
}

__device__ __forceinline__ float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s = fmaf(a[i], b[i], s);
  return s;
}

// grid (T, Hq, B); dynamic shared memory: S floats
__global__ void attn_forward(const float* q, const float* k, const float* v, const float* mask, float* out, float* lse,
                             Dims d) {
  extern __shared__ float p[];
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (d.Hq / d.Hkv);
  const int64_t row = (b * d.Hq + h) * d.T + t;
  const float* qr = q + row * d.D;
  const float* kb = k + (b * d.Hkv + hk) * d.S * d.D;
  const float* vb = v + (b * d.Hkv + hk) * d.S * d.D;
  float m = -INFINITY;
  for (int64_t s = threadIdx.x; s < d.S; s += blockDim.x) {
    const float x = visible(d, mask, b, t, s) ? dot(qr, kb + s * d.D, d.D) * d.scale : -INFINITY;
    p[s] = x;
    m = NanMaxOp()(m, x);
  }
  m = block_reduce(m, NanMaxOp());
  float* o = out + row * d.D;
  if (m == -INFINITY) {
    for (int64_t i = threadIdx.x; i < d.D; i += blockDim.x) o[i] = 0.0f;
    if (threadIdx.x == 0) lse[row] = -INFINITY;
    return;
  }
  double sum = 0;
  for (int64_t s = threadIdx.x; s < d.S; s += blockDim.x) {
    const float e = p[s] == -INFINITY ? 0.0f : expf(p[s] - m);
    p[s] = e;
    sum += e;
  }
  sum = block_reduce(sum, SumOp());  // its barriers also publish p[]
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = threadIdx.x; i < d.D; i += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < d.S; ++s) acc = fmaf(p[s], vb[s * d.D + i], acc);
    o[i] = acc * inv;
  }
  if (threadIdx.x == 0) lse[row] = static_cast<float>(static_cast<double>(m) + log(sum));
}

// Dt = rowsum(dO ∘ O), one thread per query row.
__global__ void attn_delta(const float* out, const float* dout, float* delta, int64_t rows, int64_t D) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x)
    delta[r] = dot(out + r * D, dout + r * D, D);
}

// dQ, grid (T, Hq, B); dynamic shared memory: S floats (dS of the row)
__global__ void attn_dq(const float* q, const float* k, const float* v, const float* mask, const float* lse,
                        const float* dout, const float* delta, float* dq, Dims d) {
  extern __shared__ float ds[];
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (d.Hq / d.Hkv);
  const int64_t row = (b * d.Hq + h) * d.T + t;
  const float* qr = q + row * d.D;
  const float* gr = dout + row * d.D;
  const float* kb = k + (b * d.Hkv + hk) * d.S * d.D;
  const float* vb = v + (b * d.Hkv + hk) * d.S * d.D;
  const float l = lse[row], dt = delta[row];
  for (int64_t s = threadIdx.x; s < d.S; s += blockDim.x) {
    float x = 0.0f;
    if (l != -INFINITY && visible(d, mask, b, t, s)) {
      const float pr = expf(dot(qr, kb + s * d.D, d.D) * d.scale - l);
      x = pr * (dot(gr, vb + s * d.D, d.D) - dt);
    }
    ds[s] = x;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < d.D; i += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < d.S; ++s) acc = fmaf(ds[s], kb[s * d.D + i], acc);
    dq[row * d.D + i] = acc * d.scale;
  }
}

// dK, dV, grid (S, Hkv, B); dynamic shared memory: 2·T floats (P and dS of one query
// head's column), reused for each query head of the group.
__global__ void attn_dkdv(const float* q, const float* k, const float* v, const float* mask, const float* lse,
                          const float* dout, const float* delta, float* dk, float* dv, Dims d) {
  extern __shared__ float sh[];
  float* pc = sh;
  float* dsc = sh + d.T;
  const int64_t s = blockIdx.x, hk = blockIdx.y, b = blockIdx.z, group = d.Hq / d.Hkv;
  const int64_t krow = (b * d.Hkv + hk) * d.S + s;
  const float* kr = k + krow * d.D;
  const float* vr = v + krow * d.D;
  float acc_k[4] = {0, 0, 0, 0}, acc_v[4] = {0, 0, 0, 0};  // this thread's columns: i = threadIdx.x + j·blockDim.x
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const int64_t base = (b * d.Hq + h) * d.T;
    __syncthreads();  // the previous head's columns have been consumed
    for (int64_t t = threadIdx.x; t < d.T; t += blockDim.x) {
      const float l = lse[base + t];
      float pr = 0.0f, x = 0.0f;
      if (l != -INFINITY && visible(d, mask, b, t, s)) {
        pr = expf(dot(q + (base + t) * d.D, kr, d.D) * d.scale - l);
        x = pr * (dot(dout + (base + t) * d.D, vr, d.D) - delta[base + t]);
      }
      pc[t] = pr;
      dsc[t] = x;
    }
    __syncthreads();
    for (int j = 0; j < 4; ++j) {
      const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
      if (i >= d.D) break;
      float ak = 0, av = 0;
      for (int64_t t = 0; t < d.T; ++t) {
        ak = fmaf(dsc[t], q[(base + t) * d.D + i], ak);
        av = fmaf(pc[t], dout[(base + t) * d.D + i], av);
      }
      acc_k[j] += ak;
      acc_v[j] += av;
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    if (i >= d.D) break;
    dk[krow * d.D + i] = acc_k[j] * d.scale;
    dv[krow * d.D + i] = acc_v[j];
  }
}

// Shared-memory rows are padded by 4 floats: compute-sanitizer's memcheck saw the
// compiler's vectorised tail of the row loops read up to 12 bytes past the row's end
// (values it then discards); the padding keeps such reads inside the allocation.
constexpr size_t kRowPad = 4;

bool read_dims(const KernelArgs& a, Dims& d) {
  d = {a.ints[0], a.ints[1], a.ints[2], a.ints[3], a.ints[4], a.ints[5], a.ints[6] != 0, a.ints[7] != 0,
       static_cast<float>(a.floats[0])};
  if (d.Hkv <= 0 || d.Hq % d.Hkv != 0) {
    a.error = "query heads (" + std::to_string(d.Hq) + ") must be a multiple of kv heads (" + std::to_string(d.Hkv) + ")";
    return false;
  }
  if (d.T > 65535 || d.S > 65535 || d.Hq > 65535 || d.B > 65535) {
    a.error = "this attention kernel takes at most 65535 positions, heads and batch rows";
    return false;
  }
  if (d.D > 512) {
    a.error = "this attention kernel takes a head dimension of at most 512";
    return false;
  }
  return true;
}

// Dynamic shared memory above 48 KiB needs the kernel's limit raised first.
template <typename K>
bool shared_ok(const KernelArgs& a, K kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return true;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) != cudaSuccess) {
    cudaGetLastError();
    a.error = "sequence too long for this attention kernel's shared memory";
    return false;
  }
  return true;
}

void attention(const KernelArgs& a) {
  Dims d;
  if (!read_dims(a, d) || d.B * d.Hq * d.T == 0) return;
  const float* q = static_cast<const float*>(a.ptrs[0]);
  const size_t smem = (static_cast<size_t>(d.S) + kRowPad) * sizeof(float);
  if (!shared_ok(a, attn_forward, smem)) return;
  const dim3 grid(static_cast<unsigned>(d.T), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
  attn_forward<<<grid, 128, smem, stream()>>>(q, static_cast<const float*>(a.ptrs[1]), static_cast<const float*>(a.ptrs[2]),
                                              static_cast<const float*>(a.ptrs[3]), static_cast<float*>(a.ptrs[4]),
                                              static_cast<float*>(a.ptrs[5]), d);
}

void attention_backward(const KernelArgs& a) {
  Dims d;
  if (!read_dims(a, d)) return;
  const float* q = static_cast<const float*>(a.ptrs[0]);
  const float* k = static_cast<const float*>(a.ptrs[1]);
  const float* v = static_cast<const float*>(a.ptrs[2]);
  const float* mask = static_cast<const float*>(a.ptrs[3]);
  const float* out = static_cast<const float*>(a.ptrs[4]);
  const float* lse = static_cast<const float*>(a.ptrs[5]);
  const float* dout = static_cast<const float*>(a.ptrs[6]);
  float* dq = static_cast<float*>(a.ptrs[7]);
  float* dk = static_cast<float*>(a.ptrs[8]);
  float* dv = static_cast<float*>(a.ptrs[9]);
  const int64_t rows = d.B * d.Hq * d.T;
  if (d.B * d.Hkv * d.S > 0 && rows == 0) {  // no queries: dk = dv = 0
    cudaMemsetAsync(dk, 0, static_cast<size_t>(d.B * d.Hkv * d.S * d.D) * sizeof(float), stream());
    cudaMemsetAsync(dv, 0, static_cast<size_t>(d.B * d.Hkv * d.S * d.D) * sizeof(float), stream());
    return;
  }
  if (rows == 0) return;
  static float* delta = nullptr;
  static int64_t cap = 0;
  if (rows > cap) {
    if (delta != nullptr) cudaFree(delta);  // waits for the device: the old one may be in use
    delta = nullptr;
    cap = 0;
    if (cudaMalloc(&delta, static_cast<size_t>(rows) * sizeof(float)) != cudaSuccess) {
      cudaGetLastError();
      a.error = "out of GPU memory";
      return;
    }
    cap = rows;
  }
  const size_t smem_q = (static_cast<size_t>(d.S) + kRowPad) * sizeof(float);
  const size_t smem_kv = (static_cast<size_t>(2 * d.T) + kRowPad) * sizeof(float);
  if (!shared_ok(a, attn_dq, smem_q) || !shared_ok(a, attn_dkdv, smem_kv)) return;
  attn_delta<<<grid_for(rows, 128), 128, 0, stream()>>>(out, dout, delta, rows, d.D);
  const dim3 gq(static_cast<unsigned>(d.T), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
  attn_dq<<<gq, 128, smem_q, stream()>>>(q, k, v, mask, lse, dout, delta, dq, d);
  if (d.S == 0) return;
  const dim3 gkv(static_cast<unsigned>(d.S), static_cast<unsigned>(d.Hkv), static_cast<unsigned>(d.B));
  attn_dkdv<<<gkv, 128, smem_kv, stream()>>>(q, k, v, mask, lse, dout, delta, dk, dv, d);
}

}  // namespace

FINLORA_CUDA_KERNEL("attention", attention)
FINLORA_CUDA_KERNEL("attentionBackward", attention_backward)

}  // namespace cuda
}  // namespace finlora
