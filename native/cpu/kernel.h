// finlora CPU backend: what its kernels share besides the registry and calling
// convention of native/common/kernel_registry.h (the SIMD level, the thread pool,
// bf16/f16 conversions).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernel_registry.h"

namespace finlora {

// Instruction-set level the SIMD kernels use: the best the CPU supports, or lower
// when FINLORA_CPU_ISA=avx512|avx2|scalar (or setIsa from JS) asks for it; tests use
// this to run every code path on one machine.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };
Isa isa();
Isa best_isa();
void set_isa(Isa level);

// A persistent pool of worker threads (one per core unless FINLORA_NUM_THREADS
// says otherwise). parallel_for splits [0, n) into at most num_threads() chunks of
// at least `grain` items and runs fn(begin, end) on each; the caller thread takes a
// chunk too. Nested calls run serially.
int num_threads();
void set_num_threads(int n);
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// bf16 / f16 <-> f32 conversions (round to nearest even), shared by every kernel.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Element i of a buffer of `dtype` (kernel_registry.h's codes) as f32.
inline float load_as_f32(const void* p, int64_t dtype, int64_t i) {
  switch (dtype) {
    case F32: return static_cast<const float*>(p)[i];
    case BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case I8: return static_cast<float>(static_cast<const int8_t*>(p)[i]);
    case U8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    default: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
  }
}

// Plain loops left to the vectoriser are compiled for AVX-512, AVX2 and baseline
// x86-64, and the loader picks the best the CPU has (GCC's target_clones).
#if defined(__x86_64__) && !defined(__clang__)
#define FINLORA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FINLORA_CLONES
#endif

// Strided elementwise kernels (binary, copy) walk an nd-dimensional shape as rows of
// its last dimension: how many rows there are, and where row r starts under two sets
// of strides.
inline int64_t leading_rows(const int64_t* shape, int64_t nd) {
  int64_t rows = 1;
  for (int64_t d = 0; d < nd - 1; ++d) rows *= shape[d];
  return rows;
}
inline void row_offsets(const int64_t* shape, int64_t nd, int64_t r, const int64_t* s0, const int64_t* s1, int64_t& o0,
                        int64_t& o1) {
  o0 = 0;
  o1 = 0;
  for (int64_t d = nd - 2; d >= 0; --d) {
    const int64_t idx = r % shape[d];
    r /= shape[d];
    o0 += idx * s0[d];
    o1 += idx * s1[d];
  }
}

}  // namespace finlora
