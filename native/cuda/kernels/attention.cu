// attention and its backward: scaled dot-product attention with grouped-query heads,
// the contract of src/backend/kernels.ts.
//
// attention ints: [B, Hq, Hkv, T, S, D, causal, has_mask, then the (batch, head, row)
//   element strides of q, k, v and out, dtype]; floats: [scale]
//   ptrs: [q [B,Hq,T,D], k, v [B,Hkv,S,D], keyMask [B,S] (q when absent), out [B,Hq,T,D] (=), lse [B,Hq,T] (=)]
// attentionBackward ints: the same eight, then the strides of q, k, v, out, dout, dq, dk
//   and dv, dtype; floats: the same
//   ptrs: [q, k, v, keyMask, out, lse, dout, dq (=), dk (=), dv (=)]
// dtype (the last int) is the code of q, k, v, out, dout and the gradients (f32 or bf16);
// lse and keyMask are always f32 and contiguous. Without the strides (the eight ints and
// dtype only) every operand is contiguous.
//
// Every [., ., ., D] operand is a view whose last axis is contiguous (the layout of
// native/cpu/kernels/attention.cc): a model's heads are transposed views of its
// [B, T, H, D] projections, and out and the gradients are written in that layout, so no
// head is copied on the way in or out. The flash kernels' 16-byte row copies need every
// row of their operands to start on 16 bytes: base addresses on 16 bytes and strides in
// multiples of 8 elements (checked on the host, flash_ok); other views take the plain
// kernels, which read and write through the same strides element by element.
//
// Query t attends key s when s <= t + (S - T) (causal) and keyMask[b, s] != 0. A row
// with every key masked gives zeros and lse = -inf, and passes no gradient.
// Backward (FlashAttention-2's formulation, Dao 2023): P = exp(scale·QKᵀ − lse),
// Dt = rowsum(dO ∘ O), dS = P ∘ (dO·Vᵀ − Dt); dQ = scale·dS·K, dK = scale·dSᵀ·Q, dV = Pᵀ·dO,
// with dK and dV summed over the query heads that share a kv head.
//
// Two implementations:
//  - bf16 with D a multiple of 8 up to 128 (the head dims of Llama models): flash
//    kernels on the tensor cores (mma.sync m16n8k16, bf16 operands, f32 accumulators).
//    A block owns 64 query rows of one head (forward, dQ) or 64 key rows of one kv head
//    (dK, dV); each warp owns 16 of those rows, so softmax statistics stay in registers
//    and no T x S matrix reaches device memory. Key/query tiles stream through shared
//    memory in two stages (cp.async), and tiles entirely above the causal diagonal are
//    never visited. D is padded with zeros to 32, 64, 96 or 128.
//    dQ is a second pass per query tile rather than f32 atomics from the dK/dV pass: it
//    recomputes QKᵀ and dO·Vᵀ (7 GEMMs per tile pair instead of 5) but every gradient is
//    a fixed-order sum, so a training step is reproducible bit for bit, and it needs no
//    [B, Hq, T, D] f32 scratch nor the passes that zero and convert it.
//  - everything else (f32; bf16 with other head dims or unaligned views): plain kernels,
//    one block per query row (forward, dQ) or per key row (dK, dV), f32 arithmetic over
//    either storage type. They are correct rather than fast, and are the reference the
//    flash kernels are checked against.
#include <cuda_bf16.h>

#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

// Where row t of head h in batch b of an operand starts, in elements.
struct Rows {
  int64_t sb, sh, st;
  __host__ __device__ __forceinline__ int64_t at(int64_t b, int64_t h, int64_t t) const { return b * sb + h * sh + t * st; }
};

struct Dims {
  int64_t B, Hq, Hkv, T, S, D;
  bool causal, has_mask;
  float scale;
  Rows q, k, v, o, dout, dq, dk, dv;
};

__device__ __forceinline__ bool visible(const Dims& d, const float* mask, int64_t b, int64_t t, int64_t s) {
  if (d.causal && s > t + (d.S - d.T)) return false;
  return !d.has_mask || mask[b * d.S + s] != 0.0f;
}

// Storage access for the plain kernels: f32, or bf16 bits widened to f32 and rounded
// once (to nearest even) on store.
__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const uint16_t* p, int64_t i) { return bf16_load(p, i); }
__device__ __forceinline__ void st(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void st(uint16_t* p, int64_t i, float x) { p[i] = f32_to_bf16_bits(x); }

template <typename E>
__device__ __forceinline__ float dot(const E* a, const E* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s = fmaf(ld(a, i), ld(b, i), s);
  return s;
}

// ---------------------------------------------------------------------------------
// Plain kernels.

// grid (T, Hq, B); dynamic shared memory: S floats
template <typename E>
__global__ void attn_forward(const E* q, const E* k, const E* v, const float* mask, E* out, float* lse, Dims d) {
  extern __shared__ float p[];
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (d.Hq / d.Hkv);
  const int64_t row = (b * d.Hq + h) * d.T + t;
  const E* qr = q + d.q.at(b, h, t);
  const E* kb = k + d.k.at(b, hk, 0);
  const E* vb = v + d.v.at(b, hk, 0);
  float m = -INFINITY;
  for (int64_t s = threadIdx.x; s < d.S; s += blockDim.x) {
    const float x = visible(d, mask, b, t, s) ? dot(qr, kb + s * d.k.st, d.D) * d.scale : -INFINITY;
    p[s] = x;
    m = NanMaxOp()(m, x);
  }
  m = block_reduce(m, NanMaxOp());
  E* o = out + d.o.at(b, h, t);
  if (m == -INFINITY) {
    for (int64_t i = threadIdx.x; i < d.D; i += blockDim.x) st(o, i, 0.0f);
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
    for (int64_t s = 0; s < d.S; ++s) acc = fmaf(p[s], ld(vb, s * d.v.st + i), acc);
    st(o, i, acc * inv);
  }
  if (threadIdx.x == 0) lse[row] = static_cast<float>(static_cast<double>(m) + log(sum));
}

// Dt = rowsum(dO ∘ O) in f32, one warp per query row (coalesced along D); delta is
// contiguous [B, Hq, T].
template <typename E>
__global__ void attn_delta(const E* out, const E* dout, float* delta, int64_t rows, Dims d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; r < rows; r += warps) {
    const int64_t t = r % d.T, h = (r / d.T) % d.Hq, b = r / d.T / d.Hq;
    const E* orow = out + d.o.at(b, h, t);
    const E* grow = dout + d.dout.at(b, h, t);
    float acc = 0;
    for (int64_t i = lane; i < d.D; i += 32) acc = fmaf(ld(orow, i), ld(grow, i), acc);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) delta[r] = acc;
  }
}

// dQ, grid (T, Hq, B); dynamic shared memory: S floats (dS of the row)
template <typename E>
__global__ void attn_dq(const E* q, const E* k, const E* v, const float* mask, const float* lse, const E* dout,
                        const float* delta, E* dq, Dims d) {
  extern __shared__ float ds[];
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (d.Hq / d.Hkv);
  const int64_t row = (b * d.Hq + h) * d.T + t;
  const E* qr = q + d.q.at(b, h, t);
  const E* gr = dout + d.dout.at(b, h, t);
  const E* kb = k + d.k.at(b, hk, 0);
  const E* vb = v + d.v.at(b, hk, 0);
  const float l = lse[row], dt = delta[row];
  for (int64_t s = threadIdx.x; s < d.S; s += blockDim.x) {
    float x = 0.0f;
    if (l != -INFINITY && visible(d, mask, b, t, s)) {
      const float pr = expf(dot(qr, kb + s * d.k.st, d.D) * d.scale - l);
      x = pr * (dot(gr, vb + s * d.v.st, d.D) - dt);
    }
    ds[s] = x;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < d.D; i += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < d.S; ++s) acc = fmaf(ds[s], ld(kb, s * d.k.st + i), acc);
    st(dq, d.dq.at(b, h, t) + i, acc * d.scale);
  }
}

// dK, dV, grid (S, Hkv, B); dynamic shared memory: 2·T floats (P and dS of one query
// head's column), reused for each query head of the group.
template <typename E>
__global__ void attn_dkdv(const E* q, const E* k, const E* v, const float* mask, const float* lse, const E* dout,
                          const float* delta, E* dk, E* dv, Dims d) {
  extern __shared__ float sh[];
  float* pc = sh;
  float* dsc = sh + d.T;
  const int64_t s = blockIdx.x, hk = blockIdx.y, b = blockIdx.z, group = d.Hq / d.Hkv;
  const E* kr = k + d.k.at(b, hk, s);
  const E* vr = v + d.v.at(b, hk, s);
  float acc_k[4] = {0, 0, 0, 0}, acc_v[4] = {0, 0, 0, 0};  // this thread's columns: i = threadIdx.x + j·blockDim.x
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const int64_t base = (b * d.Hq + h) * d.T;
    const E* qh = q + d.q.at(b, h, 0);
    const E* gh = dout + d.dout.at(b, h, 0);
    __syncthreads();  // the previous head's columns have been consumed
    for (int64_t t = threadIdx.x; t < d.T; t += blockDim.x) {
      const float l = lse[base + t];
      float pr = 0.0f, x = 0.0f;
      if (l != -INFINITY && visible(d, mask, b, t, s)) {
        pr = expf(dot(qh + t * d.q.st, kr, d.D) * d.scale - l);
        x = pr * (dot(gh + t * d.dout.st, vr, d.D) - delta[base + t]);
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
        ak = fmaf(dsc[t], ld(qh, t * d.q.st + i), ak);
        av = fmaf(pc[t], ld(gh, t * d.dout.st + i), av);
      }
      acc_k[j] += ak;
      acc_v[j] += av;
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    if (i >= d.D) break;
    st(dk, d.dk.at(b, hk, s) + i, acc_k[j] * d.scale);
    st(dv, d.dv.at(b, hk, s) + i, acc_v[j]);
  }
}

// dK = dV = 0 through their strides, for a call with no query rows.
template <typename E>
__global__ void zero_key_rows(E* dk, E* dv, Dims d) {
  const int64_t n = d.B * d.Hkv * d.S * d.D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % d.D, s = (e / d.D) % d.S, hk = (e / d.D / d.S) % d.Hkv, b = e / d.D / d.S / d.Hkv;
    st(dk, d.dk.at(b, hk, s) + i, 0.0f);
    st(dv, d.dv.at(b, hk, s) + i, 0.0f);
  }
}

// ---------------------------------------------------------------------------------
// Flash kernels (bf16 storage, tensor cores).

// Each warp owns 16 rows of its block's tile: query rows in the forward and dQ passes,
// key rows in the dK/dV pass. Four warps per block measured fastest for each pass on an
// H200 at Llama shapes (T 128..1024, D 64 and 128, causal) against eight (and two for
// dK/dV): the larger blocks halve the grid and leave SMs idle on the causal tail.
constexpr int kForwardWarps = 4;
constexpr int kDqWarps = 4;
constexpr int kDkdvWarps = 4;
constexpr int kTile = 64;  // keys per tile in the forward and dQ passes
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // round to nearest even, lo in the low half
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ float nan_max(float a, float b) { return (b > a || b != b) ? b : a; }

// Copies ROWS rows of D bf16 (global, `stride` elements apart, a multiple of 8) into
// shared memory with row stride DP + 8: the 16-byte skew puts the eight rows an ldmatrix
// reads in distinct banks. Rows past `valid` and columns past D are zero, so they add
// nothing to any product.
template <int ROWS, int DP>
__device__ __forceinline__ void load_rows(uint16_t* dst, const uint16_t* src, int64_t valid, int64_t D, int64_t stride) {
  constexpr int kChunks = DP / 8, LD = DP + 8;
  for (int i = threadIdx.x; i < ROWS * kChunks; i += blockDim.x) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    uint16_t* dp = dst + r * LD + c;
    if (r < valid && c < D)
      cp_async16(dp, src + r * stride + c);
    else
      *reinterpret_cast<uint4*>(dp) = make_uint4(0, 0, 0, 0);
  }
}

// A warp's MMA fragments: an accumulator acc[N/8][4] holds a 16 x N f32 tile, element
// (row g + 8·(e / 2), column 8·n + 2·(lane % 4) + e % 2) in acc[n][e], g = lane / 4.

// acc (16 x N) += A · Bᵀ: A 16 x K (row-major at a), B N x K (row-major at b), shared memory.
template <int N, int K, int LD>
__device__ __forceinline__ void mma_abt(float (&acc)[N / 8][4], const uint16_t* a, const uint16_t* b, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t af[4];
    ldsm_x4(af, a + (lane & 15) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t bf[4];
      ldsm_x4(bf, b + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
      mma_bf16(acc[2 * np], af, bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc (16 x N) += P · B: P 16 x K in accumulator registers (rounded to bf16 here),
// B K x N row-major in shared memory.
template <int N, int K, int LD>
__device__ __forceinline__ void mma_pb(float (&acc)[N / 8][4], const float (&p)[K / 8][4], const uint16_t* b,
                                       int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    const uint32_t af[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                            pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                            pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t bf[4];
      ldsm_x4_trans(bf, b + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + np * 16 + (lane >> 4) * 8);
      mma_bf16(acc[2 * np], af, bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// Writes a warp's 16 x DP accumulator rows (scaled) as bf16 rows of D, `stride`
// elements apart; rows at or past `rows` are skipped. D is a multiple of 8, so a column
// pair never straddles D.
template <int DP>
__device__ __forceinline__ void store_rows(uint16_t* dst, const float (&acc)[DP / 8][4], int64_t row0, int64_t rows,
                                           int64_t D, int64_t stride, float scale0, float scale1, int lane) {
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + g + 8 * r;
    if (row >= rows) continue;
    const float sc = r == 0 ? scale0 : scale1;
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
      const int c = n * 8 + 2 * tq;
      if (c < D)
        *reinterpret_cast<uint32_t*>(dst + row * stride + c) = pack_bf16(acc[n][2 * r] * sc, acc[n][2 * r + 1] * sc);
    }
  }
}

// Key tiles a block of query rows [q0, q_end) must visit: none past the causal diagonal.
__device__ __forceinline__ int key_tiles(const Dims& d, int64_t q_end) {
  int64_t n = (d.S + kTile - 1) / kTile;
  if (d.causal) {
    const int64_t last = q_end - 1 + d.S - d.T;  // the last key the block's last row sees
    n = last < 0 ? 0 : min(n, last / kTile + 1);
  }
  return static_cast<int>(n);
}

__device__ __forceinline__ bool visible_in(const Dims& d, const float* mask, int64_t b, int64_t t, int64_t s) {
  return t < d.T && s < d.S && visible(d, mask, b, t, s);
}

// Waits until key tile j of n_kv is in shared memory, having started the copy of tile
// j + 1 into the other stage first so that it overlaps the work on tile j. kb and vb
// point at key 0 of the block's kv head.
template <int DP, int LD>
__device__ __forceinline__ void wait_kv_tile(uint16_t* sk, uint16_t* sv, const uint16_t* kb, const uint16_t* vb, int j, int n_kv,
                                             const Dims& d) {
  if (j + 1 < n_kv) {
    const int64_t s1 = static_cast<int64_t>(j + 1) * kTile;
    load_rows<kTile, DP>(sk + ((j + 1) & 1) * kTile * LD, kb + s1 * d.k.st, d.S - s1, d.D, d.k.st);
    load_rows<kTile, DP>(sv + ((j + 1) & 1) * kTile * LD, vb + s1 * d.v.st, d.S - s1, d.D, d.v.st);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// Forward. grid (ceil(T/BM), Hq, B), BM = 16·WARPS query rows, 32·WARPS threads. Shared
// memory: Q BM rows, K and V 64 rows each in two stages. Online softmax in the exp2
// domain with f32 running max and sum per row (FlashAttention-2): a NaN score makes its
// row's max NaN, so the row turns NaN; a row that has seen only masked keys keeps max
// -inf and sum 0.
template <int DP, int WARPS>
__global__ void __launch_bounds__(32 * WARPS)
    flash_forward(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                  const float* __restrict__ mask, uint16_t* __restrict__ out, float* __restrict__ lse, Dims d) {
  constexpr int LD = DP + 8, BM = 16 * WARPS;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sq = smem;
  uint16_t* sk = sq + BM * LD;
  uint16_t* sv = sk + 2 * kTile * LD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t h = blockIdx.y, b = blockIdx.z, hk = h / (d.Hq / d.Hkv), off = d.S - d.T;
  // The last query tiles see the most keys under a causal mask: start them first.
  const int64_t q0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * BM;
  const int64_t q_end = min(q0 + BM, d.T);
  const int n_kv = key_tiles(d, q_end);
  const int64_t row_base = (b * d.Hq + h) * d.T;  // of lse
  const uint16_t* kb = k + d.k.at(b, hk, 0);
  const uint16_t* vb = v + d.v.at(b, hk, 0);
  const float scale2 = d.scale * kLog2e;

  load_rows<BM, DP>(sq, q + d.q.at(b, h, q0), q_end - q0, d.D, d.q.st);
  if (n_kv > 0) {
    load_rows<kTile, DP>(sk, kb, d.S, d.D, d.k.st);
    load_rows<kTile, DP>(sv, vb, d.S, d.D, d.v.st);
  }
  cp_async_commit();

  float o[DP / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const int64_t row0 = q0 + warp * 16 + g;
  for (int j = 0; j < n_kv; ++j) {
    wait_kv_tile<DP, LD>(sk, sv, kb, vb, j, n_kv, d);
    const uint16_t* ck = sk + (j & 1) * kTile * LD;
    const uint16_t* cv = sv + (j & 1) * kTile * LD;
    float s[kTile / 8][4] = {};
    mma_abt<kTile, DP, LD>(s, sq + warp * 16 * LD, ck, lane);

    const int64_t s0 = static_cast<int64_t>(j) * kTile;
    const bool edge = d.has_mask || s0 + kTile > d.S || (d.causal && s0 + kTile - 1 > q0 + off);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * scale2;
        if (edge && !visible_in(d, mask, b, row0 + 8 * (e >> 1), s0 + n * 8 + 2 * tq + (e & 1))) x = -INFINITY;
        s[n][e] = x;
        mx[e >> 1] = nan_max(mx[e >> 1], x);
      }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = nan_max(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = nan_max(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = nan_max(m[r], mx[r]);
      base[r] = mn == -INFINITY ? 0.0f : mn;  // no key seen yet: exp2(-inf - 0) = 0, not NaN
      const float corr = exp2f(m[r] - base[r]);
      m[r] = mn;
      l[r] *= corr;
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        o[n][2 * r] *= corr;
        o[n][2 * r + 1] *= corr;
      }
    }
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[n][e] - base[e >> 1]);
        s[n][e] = p;
        l[e >> 1] += p;
      }
    mma_pb<DP, kTile, LD>(o, s, cv, lane);
    __syncthreads();  // stage j & 1 is refilled next iteration
  }
  cp_async_wait<0>();  // with no key tile to visit, Q's copy is still in flight

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = l[r] == 0.0f ? 0.0f : 1.0f / l[r];  // NaN stays NaN
    const int64_t t = row0 + 8 * r;
    if (tq == 0 && t < d.T) lse[row_base + t] = l[r] == 0.0f ? -INFINITY : (m[r] + log2f(l[r])) * kLn2;
  }
  store_rows<DP>(out + d.o.at(b, h, 0), o, q0 + warp * 16, d.T, d.D, d.o.st, inv[0], inv[1], lane);
}

// dQ pass. grid (ceil(T/BM), Hq, B), BM = 16·WARPS query rows, 32·WARPS threads. Shared
// memory: Q and dO BM rows each, K and V 64 rows each in two stages. Per key tile:
// S = QKᵀ, dP = dO·Vᵀ (both 16 x 64 per warp), dS = P ∘ (dP − Dt), dQ += dS·K.
template <int DP, int WARPS>
__global__ void __launch_bounds__(32 * WARPS)
    flash_backward_dq(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                      const float* __restrict__ mask, const float* __restrict__ lse, const uint16_t* __restrict__ dout,
                      const float* __restrict__ delta, uint16_t* __restrict__ dq, Dims d) {
  constexpr int LD = DP + 8, BM = 16 * WARPS;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sq = smem;
  uint16_t* sdo = sq + BM * LD;
  uint16_t* sk = sdo + BM * LD;
  uint16_t* sv = sk + 2 * kTile * LD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t h = blockIdx.y, b = blockIdx.z, hk = h / (d.Hq / d.Hkv), off = d.S - d.T;
  const int64_t q0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * BM;
  const int64_t q_end = min(q0 + BM, d.T);
  const int n_kv = key_tiles(d, q_end);
  const int64_t row_base = (b * d.Hq + h) * d.T;  // of lse and Dt
  const uint16_t* kb = k + d.k.at(b, hk, 0);
  const uint16_t* vb = v + d.v.at(b, hk, 0);
  const float scale2 = d.scale * kLog2e;

  load_rows<BM, DP>(sq, q + d.q.at(b, h, q0), q_end - q0, d.D, d.q.st);
  load_rows<BM, DP>(sdo, dout + d.dout.at(b, h, q0), q_end - q0, d.D, d.dout.st);
  if (n_kv > 0) {
    load_rows<kTile, DP>(sk, kb, d.S, d.D, d.k.st);
    load_rows<kTile, DP>(sv, vb, d.S, d.D, d.v.st);
  }
  cp_async_commit();

  const int64_t row0 = q0 + warp * 16 + g;
  float lrow[2], drow[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t t = row0 + 8 * r;
    const float l = t < d.T ? lse[row_base + t] : -INFINITY;
    lrow[r] = l == -INFINITY ? INFINITY : l * kLog2e;  // a fully masked row: P = exp2(x - inf) = 0
    drow[r] = t < d.T ? delta[row_base + t] : 0.0f;
  }
  float acc[DP / 8][4] = {};
  for (int j = 0; j < n_kv; ++j) {
    wait_kv_tile<DP, LD>(sk, sv, kb, vb, j, n_kv, d);
    const uint16_t* ck = sk + (j & 1) * kTile * LD;
    const uint16_t* cv = sv + (j & 1) * kTile * LD;
    float s[kTile / 8][4] = {};
    mma_abt<kTile, DP, LD>(s, sq + warp * 16 * LD, ck, lane);
    float dp[kTile / 8][4] = {};
    mma_abt<kTile, DP, LD>(dp, sdo + warp * 16 * LD, cv, lane);

    const int64_t s0 = static_cast<int64_t>(j) * kTile;
    const bool edge = d.has_mask || s0 + kTile > d.S || (d.causal && s0 + kTile - 1 > q0 + off);
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float ds = exp2f(s[n][e] * scale2 - lrow[r]) * (dp[n][e] - drow[r]);
        if (edge && !visible_in(d, mask, b, row0 + 8 * r, s0 + n * 8 + 2 * tq + (e & 1))) ds = 0.0f;
        s[n][e] = ds;
      }
    mma_pb<DP, kTile, LD>(acc, s, ck, lane);
    __syncthreads();
  }
  cp_async_wait<0>();
  store_rows<DP>(dq + d.dq.at(b, h, 0), acc, q0 + warp * 16, d.T, d.D, d.dq.st, d.scale, d.scale, lane);
}

// dK, dV pass. grid (ceil(S/BC), Hkv, B), BC = 16·WARPS keys, 32·WARPS threads. The
// block walks the query tiles (BR rows) of every query head sharing its kv head, in a
// fixed order, from the first tile that sees its keys. Shared memory: K and V BC rows;
// Q, dO BR rows each, lse and Dt BR floats each, in two stages. Per query tile: Sᵀ = K·Qᵀ,
// Pᵀ, dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − Dt), dK += dSᵀ·Q.
template <int DP, int BR, int WARPS>
__global__ void __launch_bounds__(32 * WARPS)
    flash_backward_dkdv(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                        const uint16_t* __restrict__ v, const float* __restrict__ mask, const float* __restrict__ lse,
                        const uint16_t* __restrict__ dout, const float* __restrict__ delta, uint16_t* __restrict__ dk,
                        uint16_t* __restrict__ dv, Dims d) {
  constexpr int LD = DP + 8, BC = 16 * WARPS;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sk = smem;
  uint16_t* sv = sk + BC * LD;
  uint16_t* sq = sv + BC * LD;       // two stages
  uint16_t* sdo = sq + 2 * BR * LD;  // two stages
  float* sl = reinterpret_cast<float*>(sdo + 2 * BR * LD);
  float* sdt = sl + 2 * BR;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t hk = blockIdx.y, b = blockIdx.z, group = d.Hq / d.Hkv, off = d.S - d.T;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * BC;  // the first key tiles see the most queries
  const float scale2 = d.scale * kLog2e;

  int64_t i0 = 0;  // the first query tile that sees key k0
  if (d.causal) {
    const int64_t lo = k0 - off;
    i0 = lo <= 0 ? 0 : lo / BR;
  }
  const int64_t n_q = (d.T + BR - 1) / BR;
  const int64_t per_head = n_q > i0 ? n_q - i0 : 0;
  const int64_t n_it = group * per_head;

  auto stage = [&](int64_t it, int buf) {
    const int64_t h = hk * group + it / per_head, t0 = (i0 + it % per_head) * BR;
    const int64_t rb = (b * d.Hq + h) * d.T + t0;  // of lse and Dt
    load_rows<BR, DP>(sq + buf * BR * LD, q + d.q.at(b, h, t0), d.T - t0, d.D, d.q.st);
    load_rows<BR, DP>(sdo + buf * BR * LD, dout + d.dout.at(b, h, t0), d.T - t0, d.D, d.dout.st);
    for (int r = threadIdx.x; r < BR; r += blockDim.x) {
      const bool in = t0 + r < d.T;
      const float l = in ? lse[rb + r] : -INFINITY;
      sl[buf * BR + r] = l == -INFINITY ? INFINITY : l * kLog2e;
      sdt[buf * BR + r] = in ? delta[rb + r] : 0.0f;
    }
  };

  load_rows<BC, DP>(sk, k + d.k.at(b, hk, k0), d.S - k0, d.D, d.k.st);
  load_rows<BC, DP>(sv, v + d.v.at(b, hk, k0), d.S - k0, d.D, d.v.st);
  if (n_it > 0) stage(0, 0);
  cp_async_commit();

  bool key_ok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = k0 + warp * 16 + g + 8 * r;
    key_ok[r] = key < d.S && (!d.has_mask || mask[b * d.S + key] != 0.0f);
  }
  float dka[DP / 8][4] = {}, dva[DP / 8][4] = {};
  for (int64_t it = 0; it < n_it; ++it) {
    if (it + 1 < n_it) {
      stage(it + 1, static_cast<int>((it + 1) & 1));
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int buf = static_cast<int>(it & 1);
    const uint16_t* cq = sq + buf * BR * LD;
    const uint16_t* cdo = sdo + buf * BR * LD;
    const float* cl = sl + buf * BR;
    const float* cdt = sdt + buf * BR;
    const int64_t t0 = (i0 + it % per_head) * BR;
    const bool edge =
        d.has_mask || k0 + BC > d.S || t0 + BR > d.T || (d.causal && t0 + off < k0 + BC - 1);
    // Whether (query t0 + c, this thread's key row r) is an attended pair.
    auto pair_ok = [&](int c, int r) {
      const int64_t t = t0 + c, key = k0 + warp * 16 + g + 8 * r;
      return key_ok[r] && t < d.T && (!d.causal || key <= t + off);
    };

    float st[BR / 8][4] = {};
    mma_abt<BR, DP, LD>(st, sk + warp * 16 * LD, cq, lane);
#pragma unroll
    for (int n = 0; n < BR / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * tq + (e & 1);
        float p = exp2f(st[n][e] * scale2 - cl[c]);
        if (edge && !pair_ok(c, e >> 1)) p = 0.0f;
        st[n][e] = p;
      }
    mma_pb<DP, BR, LD>(dva, st, cdo, lane);
    float dpt[BR / 8][4] = {};
    mma_abt<BR, DP, LD>(dpt, sv + warp * 16 * LD, cdo, lane);
#pragma unroll
    for (int n = 0; n < BR / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * tq + (e & 1);
        float ds = st[n][e] * (dpt[n][e] - cdt[c]);
        if (edge && !pair_ok(c, e >> 1)) ds = 0.0f;
        dpt[n][e] = ds;
      }
    mma_pb<DP, BR, LD>(dka, dpt, cq, lane);
    __syncthreads();
  }
  cp_async_wait<0>();  // with no query tile to visit, K and V's copies are still in flight
  store_rows<DP>(dk + d.dk.at(b, hk, 0), dka, k0 + warp * 16, d.S, d.D, d.dk.st, d.scale, d.scale, lane);
  store_rows<DP>(dv + d.dv.at(b, hk, 0), dva, k0 + warp * 16, d.S, d.D, d.dv.st, 1.0f, 1.0f, lane);
}

// ---------------------------------------------------------------------------------
// Host side.

// Shared-memory rows of the plain kernels are padded by 4 floats: compute-sanitizer's
// memcheck saw the compiler's vectorised tail of the row loops read up to 12 bytes past
// the row's end (values it then discards); the padding keeps such reads inside the
// allocation.
constexpr size_t kRowPad = 4;

// The layout's eight dims, then, when present, the row strides of `operands` operands
// (q, k, v, out; then dout, dq, dk, dv in backward), then dtype.
bool read_dims(const KernelArgs& a, Dims& d, int64_t& dtype, size_t operands) {
  d = {a.ints[0], a.ints[1], a.ints[2], a.ints[3], a.ints[4], a.ints[5], a.ints[6] != 0, a.ints[7] != 0,
       static_cast<float>(a.floats[0])};
  const size_t n = a.ints.size(), strided = 8 + 3 * operands;
  const bool has_strides = n == strided || n == strided + 1;
  dtype = n == strided + 1 || n == 9 ? a.ints.back() : F32;
  const Rows queries{d.Hq * d.T * d.D, d.T * d.D, d.D}, keys{d.Hkv * d.S * d.D, d.S * d.D, d.D};
  Rows* rows[8] = {&d.q, &d.k, &d.v, &d.o, &d.dout, &d.dq, &d.dk, &d.dv};
  for (size_t i = 0; i < 8; ++i) {
    const bool key_side = i == 1 || i == 2 || i == 6 || i == 7;
    *rows[i] = key_side ? keys : queries;
    if (has_strides && i < operands) *rows[i] = {a.ints[8 + 3 * i], a.ints[9 + 3 * i], a.ints[10 + 3 * i]};
  }
  if (dtype != F32 && dtype != BF16) {
    a.error = "attention computes in f32 or bf16, not dtype code " + std::to_string(dtype);
    return false;
  }
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

// The operand at ptrs[i] (q 0, k 1, v 2, out 4, dout 6, dq 7, dk 8, dv 9): its row
// strides and whether it is a key-side [B, Hkv, S, D] one.
const Rows& rows_of(const Dims& d, int i, bool* key_side) {
  *key_side = i == 1 || i == 2 || i == 8 || i == 9;
  switch (i) {
    case 0: return d.q;
    case 1: return d.k;
    case 2: return d.v;
    case 4: return d.o;
    case 6: return d.dout;
    case 7: return d.dq;
    case 8: return d.dk;
    default: return d.dv;
  }
}

// The flash kernels move rows with 16-byte copies: bf16, D a multiple of 8 up to 128,
// and every row of every operand starting on 16 bytes: the base address aligned (a
// view's offset can break that) and each stride a multiple of 8 elements (that of an
// axis of size 1 is never used). Transposed views of [B, T, H, D] projections with D a
// multiple of 8 qualify; other views take the plain kernels, without a copy.
bool flash_ok(const KernelArgs& a, const Dims& d, int64_t dtype, std::initializer_list<int> operands) {
  if (dtype != BF16 || d.D <= 0 || d.D > 128 || d.D % 8 != 0) return false;
  for (int i : operands) {
    if (reinterpret_cast<uintptr_t>(a.ptrs[i]) % 16 != 0) return false;
    bool key_side;
    const Rows& r = rows_of(d, i, &key_side);
    const int64_t heads = key_side ? d.Hkv : d.Hq, len = key_side ? d.S : d.T;
    if ((d.B > 1 && r.sb % 8 != 0) || (heads > 1 && r.sh % 8 != 0) || (len > 1 && r.st % 8 != 0)) return false;
  }
  return true;
}

int padded_dim(int64_t D) { return D <= 32 ? 32 : D <= 64 ? 64 : D <= 96 ? 96 : 128; }

template <int DP>
void flash_attention(const KernelArgs& a, const Dims& d) {
  constexpr int BM = 16 * kForwardWarps;
  constexpr size_t smem = static_cast<size_t>((BM + 4 * kTile) * (DP + 8)) * sizeof(uint16_t);
  if (!shared_ok(a, flash_forward<DP, kForwardWarps>, smem)) return;
  const dim3 grid(static_cast<unsigned>((d.T + BM - 1) / BM), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
  flash_forward<DP, kForwardWarps><<<grid, 32 * kForwardWarps, smem, stream()>>>(
      static_cast<const uint16_t*>(a.ptrs[0]), static_cast<const uint16_t*>(a.ptrs[1]),
      static_cast<const uint16_t*>(a.ptrs[2]), static_cast<const float*>(a.ptrs[3]), static_cast<uint16_t*>(a.ptrs[4]),
      static_cast<float*>(a.ptrs[5]), d);
}

template <typename E>
void plain_attention(const KernelArgs& a, const Dims& d) {
  const size_t smem = (static_cast<size_t>(d.S) + kRowPad) * sizeof(float);
  if (!shared_ok(a, attn_forward<E>, smem)) return;
  const dim3 grid(static_cast<unsigned>(d.T), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
  attn_forward<E><<<grid, 128, smem, stream()>>>(static_cast<const E*>(a.ptrs[0]), static_cast<const E*>(a.ptrs[1]),
                                                 static_cast<const E*>(a.ptrs[2]), static_cast<const float*>(a.ptrs[3]),
                                                 static_cast<E*>(a.ptrs[4]), static_cast<float*>(a.ptrs[5]), d);
}

void attention(const KernelArgs& a) {
  Dims d;
  int64_t dtype;
  if (!read_dims(a, d, dtype, 4) || d.B * d.Hq * d.T == 0) return;
  if (flash_ok(a, d, dtype, {0, 1, 2, 4})) {
    switch (padded_dim(d.D)) {
      case 32: return flash_attention<32>(a, d);
      case 64: return flash_attention<64>(a, d);
      case 96: return flash_attention<96>(a, d);
      default: return flash_attention<128>(a, d);
    }
  }
  if (dtype == BF16) return plain_attention<uint16_t>(a, d);
  plain_attention<float>(a, d);
}

// Dt = rowsum(dO ∘ O) per query row, in a scratch kept between calls.
float* delta_scratch(const KernelArgs& a, int64_t rows) {
  static float* delta = nullptr;
  static int64_t cap = 0;
  if (rows > cap) {
    if (delta != nullptr) cudaFree(delta);  // waits for the device: the old one may be in use
    delta = nullptr;
    cap = 0;
    if (cudaMalloc(&delta, static_cast<size_t>(rows) * sizeof(float)) != cudaSuccess) {
      cudaGetLastError();
      a.error = "out of GPU memory";
      return nullptr;
    }
    cap = rows;
  }
  return delta;
}

template <int DP>
void flash_backward(const KernelArgs& a, const Dims& d, const float* delta) {
  // Wider heads take 32-row query tiles in the dK/dV pass: its two 16 x DP f32
  // accumulators per warp already fill most of the registers.
  constexpr int BR = DP <= 64 ? 64 : 32, BM = 16 * kDqWarps;
  constexpr size_t smem_q = static_cast<size_t>((2 * BM + 4 * kTile) * (DP + 8)) * sizeof(uint16_t);
  constexpr int BC = 16 * kDkdvWarps;
  constexpr size_t smem_kv =
      static_cast<size_t>((2 * BC + 4 * BR) * (DP + 8)) * sizeof(uint16_t) + 4 * BR * sizeof(float);
  if (!shared_ok(a, flash_backward_dq<DP, kDqWarps>, smem_q) || !shared_ok(a, flash_backward_dkdv<DP, BR, kDkdvWarps>, smem_kv)) return;
  const uint16_t* q = static_cast<const uint16_t*>(a.ptrs[0]);
  const uint16_t* k = static_cast<const uint16_t*>(a.ptrs[1]);
  const uint16_t* v = static_cast<const uint16_t*>(a.ptrs[2]);
  const float* mask = static_cast<const float*>(a.ptrs[3]);
  const float* lse = static_cast<const float*>(a.ptrs[5]);
  const uint16_t* dout = static_cast<const uint16_t*>(a.ptrs[6]);
  const dim3 gq(static_cast<unsigned>((d.T + BM - 1) / BM), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
  flash_backward_dq<DP, kDqWarps><<<gq, 32 * kDqWarps, smem_q, stream()>>>(q, k, v, mask, lse, dout, delta,
                                                            static_cast<uint16_t*>(a.ptrs[7]), d);
  if (d.S == 0) return;
  const dim3 gkv(static_cast<unsigned>((d.S + BC - 1) / BC), static_cast<unsigned>(d.Hkv), static_cast<unsigned>(d.B));
  flash_backward_dkdv<DP, BR, kDkdvWarps><<<gkv, 32 * kDkdvWarps, smem_kv, stream()>>>(
      q, k, v, mask, lse, dout, delta, static_cast<uint16_t*>(a.ptrs[8]), static_cast<uint16_t*>(a.ptrs[9]), d);
}

template <typename E>
void plain_backward(const KernelArgs& a, const Dims& d, const float* delta) {
  const size_t smem_q = (static_cast<size_t>(d.S) + kRowPad) * sizeof(float);
  const size_t smem_kv = (static_cast<size_t>(2 * d.T) + kRowPad) * sizeof(float);
  if (!shared_ok(a, attn_dq<E>, smem_q) || !shared_ok(a, attn_dkdv<E>, smem_kv)) return;
  const E* q = static_cast<const E*>(a.ptrs[0]);
  const E* k = static_cast<const E*>(a.ptrs[1]);
  const E* v = static_cast<const E*>(a.ptrs[2]);
  const float* mask = static_cast<const float*>(a.ptrs[3]);
  const float* lse = static_cast<const float*>(a.ptrs[5]);
  const E* dout = static_cast<const E*>(a.ptrs[6]);
  const dim3 gq(static_cast<unsigned>(d.T), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
  attn_dq<E><<<gq, 128, smem_q, stream()>>>(q, k, v, mask, lse, dout, delta, static_cast<E*>(a.ptrs[7]), d);
  if (d.S == 0) return;
  const dim3 gkv(static_cast<unsigned>(d.S), static_cast<unsigned>(d.Hkv), static_cast<unsigned>(d.B));
  attn_dkdv<E><<<gkv, 128, smem_kv, stream()>>>(q, k, v, mask, lse, dout, delta, static_cast<E*>(a.ptrs[8]),
                                               static_cast<E*>(a.ptrs[9]), d);
}

void attention_backward(const KernelArgs& a) {
  Dims d;
  int64_t dtype;
  if (!read_dims(a, d, dtype, 8)) return;
  const int64_t rows = d.B * d.Hq * d.T;
  if (d.B * d.Hkv * d.S * d.D > 0 && rows == 0) {  // no queries: dk = dv = 0
    const unsigned grid = grid_for(d.B * d.Hkv * d.S * d.D, 256);
    if (dtype == BF16) {
      zero_key_rows<<<grid, 256, 0, stream()>>>(static_cast<uint16_t*>(a.ptrs[8]), static_cast<uint16_t*>(a.ptrs[9]), d);
    } else {
      zero_key_rows<<<grid, 256, 0, stream()>>>(static_cast<float*>(a.ptrs[8]), static_cast<float*>(a.ptrs[9]), d);
    }
    return;
  }
  if (rows == 0) return;
  float* delta = delta_scratch(a, rows);
  if (delta == nullptr) return;
  const unsigned delta_grid = grid_for(rows * 32, 256);
  if (dtype == BF16) {
    attn_delta<uint16_t><<<delta_grid, 256, 0, stream()>>>(static_cast<const uint16_t*>(a.ptrs[4]),
                                                           static_cast<const uint16_t*>(a.ptrs[6]), delta, rows, d);
  } else {
    attn_delta<float><<<delta_grid, 256, 0, stream()>>>(static_cast<const float*>(a.ptrs[4]),
                                                        static_cast<const float*>(a.ptrs[6]), delta, rows, d);
  }
  if (flash_ok(a, d, dtype, {0, 1, 2, 6, 7, 8, 9})) {
    switch (padded_dim(d.D)) {
      case 32: return flash_backward<32>(a, d, delta);
      case 64: return flash_backward<64>(a, d, delta);
      case 96: return flash_backward<96>(a, d, delta);
      default: return flash_backward<128>(a, d, delta);
    }
  }
  if (dtype == BF16) return plain_backward<uint16_t>(a, d, delta);
  plain_backward<float>(a, d, delta);
}

}  // namespace

FINLORA_KERNEL("attention", attention)
FINLORA_KERNEL("attentionBackward", attention_backward)

}  // namespace cuda
}  // namespace finlora
