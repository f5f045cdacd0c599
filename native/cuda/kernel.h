// finlora CUDA backend: what its kernels share besides the registry and calling
// convention of native/common/kernel_registry.h (the same as the CPU addon's, with
// device pointers). Every launch goes to stream(), the backend's one stream, so
// launches return at once and run in order; only read() and sync() wait.
#pragma once
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernel_registry.h"

namespace finlora {
namespace cuda {

// The backend's stream and cuBLAS handles (created on first use, in runtime.cu).
cudaStream_t stream();
cublasHandle_t cublas();
cublasLtHandle_t cublas_lt();
// One device workspace for cuBLASLt's GEMMs (every use is ordered on the one stream);
// *bytes is 0 (and the pointer null) when it could not be allocated.
void* gemm_workspace(size_t* bytes);

// The activation dtype T of a kernel (the bf16 compute contract): the trailing int of
// its layout, after the `base` ints it has always had. A layout without it means f32.
inline int64_t trailing_dtype(const KernelArgs& a, size_t base) { return a.ints.size() > base ? a.ints.back() : F32; }

// True when T is one the kernels compute in (f32 or bf16); otherwise sets a.error.
inline bool compute_dtype_ok(const KernelArgs& a, int64_t dt) {
  if (dt == F32 || dt == BF16) return true;
  a.error = "activation dtype code " + std::to_string(dt) + " is neither f32 (0) nor bf16 (1)";
  return false;
}

// 16-byte aligned, so a kernel may move 8 bf16 or 4 f32 per load.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A small device scratch area (an int) and its pinned host mirror, for kernels that
// must validate indices before writing anything (gather, crossEntropy): a check
// kernel records the first bad position, the host waits for that one int, and only
// then is the real kernel launched. Returns -1 when every index is valid.
// Valid means lo <= v < hi, or v == skip (an exempt value such as ignore_index; pass
// kNoSkip when there is none).
constexpr int64_t kNoSkip = INT64_MIN;
int64_t first_bad_index(const int32_t* ids, int64_t n, int64_t lo, int64_t hi, int64_t skip);

// The launch profile (FINLORA_PROFILE=1 or setProfiling): while it is on, each kernel
// run and each host copy is bracketed by two CUDA events on stream(), taken from a pool
// and given back once read, so nothing waits per launch. A key names what a bracket
// times (the JS side's label index; kCopyIn / kCopyOut for copies). Off, begin/end
// return at once and no event is recorded.
namespace profile {
constexpr int64_t kCopyIn = -1, kCopyOut = -2;
// A launch given no key is kept under kUnlabelled - its kernel id.
constexpr int64_t kUnlabelled = -3;
struct Total {
  int64_t key;
  int64_t calls;
  double ms;  // GPU time between each bracket's two events, summed
};
bool on();
void set(bool on);
void begin(int64_t key);
void end();
// Waits for the stream, then returns the totals per key since the last read and
// clears them; the stream's error, if any, is returned and the totals kept.
cudaError_t read(std::vector<Total>* out);
}  // namespace profile

// Grid size for n items at `block` threads each, capped so a grid-stride loop covers the rest.
inline unsigned grid_for(int64_t n, int block) {
  int64_t g = (n + block - 1) / block;
  if (g < 1) g = 1;
  if (g > 65535LL * 32) g = 65535LL * 32;
  return static_cast<unsigned>(g);
}

}  // namespace cuda
}  // namespace finlora

// Device helpers, for the .cu files only (binding.cc is compiled as host C++).
#ifdef __CUDACC__
namespace finlora {
namespace cuda {

// Storage conversions shared by kernels (f32 compute, round to nearest even on store).
__device__ __forceinline__ float bf16_load(const uint16_t* p, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
}
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
__device__ __forceinline__ float f16_load(const uint16_t* p, int64_t i) {
  return __half2float(__ushort_as_half(p[i]));
}

// Activation storage: kernels are templates over T = float or bf16 (the bits of a
// bfloat16, as in the tensor's buffer) and compute in f32; ld widens exactly, st rounds
// once to nearest even (the hardware cvt.rn, which matches f32_to_bf16_bits for every
// non-NaN value).
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 is two bytes");

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, int64_t i) { return __uint_as_float(static_cast<uint32_t>(p[i].bits) << 16); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, int64_t i, float v) { p[i].bits = __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
// v rounded to T and widened back: the value a T store followed by a load gives.
__device__ __forceinline__ float round_to(const float*, float v) { return v; }
__device__ __forceinline__ float round_to(const bf16*, float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// Eight consecutive elements at a 16-byte aligned address (two float4 or one uint4).
__device__ __forceinline__ void ld8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void ld8(const bf16* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    v[2 * j] = __uint_as_float(w[j] << 16);
    v[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
  }
}
__device__ __forceinline__ void st8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x (low half) from lo
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ void st8(bf16* p, const float (&v)[8]) {
  *reinterpret_cast<uint4*>(p) =
      make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7]));
}

// The elementwise kernels walk their n elements in chunks of 8: a full chunk at
// aligned addresses (VEC) moves through ld8/st8, the tail and unaligned views one
// element at a time. Same arithmetic either way, so the results do not depend on it.
__device__ __forceinline__ int64_t chunk_begin() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t chunk_step() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Block-wide reductions for kernels that give one block to a row. Every thread of the
// block must call them; the result is returned to all threads. blockDim.x must be a
// multiple of 32 and at most 1024.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op) {
  __shared__ T partial[32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  // Every thread combines the warps' partials in the same order: the result is
  // identical across threads and deterministic from run to run.
  v = partial[0];
  for (int w = 1; w < warps; ++w) v = op(v, partial[w]);
  return v;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
// max that propagates NaN
struct NanMaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return (b > a || b != b) ? b : a; }
  __device__ __forceinline__ double operator()(double a, double b) const { return (b > a || b != b) ? b : a; }
};

}  // namespace cuda
}  // namespace finlora
#endif  // __CUDACC__
