// finlora CUDA backend: the contract between binding.cc (the only file that touches
// N-API) and the kernels in kernels/. It mirrors native/cpu/kernel.h: a kernel is a
// plain host function over device pointers that registers itself by name with
// FINLORA_CUDA_KERNEL, so adding a kernel never edits the binding.
//
// Calling convention (KernelArgs):
//   ptrs   - one device pointer per buffer operand, already advanced by the view's offset
//   ints   - shapes, strides (in elements), dtype codes, flags; the layout of each
//            kernel is documented at its registration and is the CPU kernel's layout
//   floats - scalar attributes (eps, scale, alpha, ...)
// Every launch goes to stream(), the backend's one stream, so launches return at once
// and run in order; only read() and sync() wait. Accumulation rule as on the CPU:
// parameter-gradient kernels say when they accumulate (+=), others overwrite (=).
#pragma once
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <vector>

namespace finlora {
namespace cuda {

struct KernelArgs {
  std::vector<void*> ptrs;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  // A kernel that meets bad data (an id out of range, say) sets this instead of
  // launching; the binding turns it into a JS exception naming the kernel.
  mutable std::string error;
};

using KernelFn = void (*)(const KernelArgs&);

struct KernelEntry {
  const char* name;
  KernelFn fn;
};

std::vector<KernelEntry>& kernel_registry();

struct RegisterKernel {
  RegisterKernel(const char* name, KernelFn fn) { kernel_registry().push_back({name, fn}); }
};

#define FINLORA_CUDA_CONCAT_INNER(a, b) a##b
#define FINLORA_CUDA_CONCAT(a, b) FINLORA_CUDA_CONCAT_INNER(a, b)
#define FINLORA_CUDA_KERNEL(name, fn) \
  static ::finlora::cuda::RegisterKernel FINLORA_CUDA_CONCAT(finlora_cuda_reg_, __LINE__)(name, fn);

// dtype codes, shared with src/tensor/dtype.ts
enum DType : int64_t { F32 = 0, BF16 = 1, F16 = 2, I8 = 3, U8 = 4, I32 = 5 };

// The backend's stream and cuBLAS handle (created on first use, in runtime.cu).
cudaStream_t stream();
cublasHandle_t cublas();

// A small device scratch area (an int) and its pinned host mirror, for kernels that
// must validate indices before writing anything (gather, crossEntropy): a check
// kernel records the first bad position, the host waits for that one int, and only
// then is the real kernel launched. Returns -1 when every index is valid.
// Valid means lo <= v < hi, or v == skip (an exempt value such as ignore_index; pass
// kNoSkip when there is none).
constexpr int64_t kNoSkip = INT64_MIN;
int64_t first_bad_index(const int32_t* ids, int64_t n, int64_t lo, int64_t hi, int64_t skip);

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
