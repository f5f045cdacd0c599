// The register-tiled micro-kernels behind the "matmul" kernel (kernels/matmul.cc),
// one per instruction-set level, and the cache-blocking sizes that go with each.
// The blocked loop nest and its packed layouts follow Goto & van de Geijn, "Anatomy
// of High-Performance Matrix Multiplication" (2008), and the BLIS framework's
// five-loop structure.
//
// Packed layouts (every micro-kernel reads these):
//   A micro-panel: kc steps of `mr` floats, a[k * mr + i] = op(A)[i, k]; rows past
//                  the matrix edge are zero.
//   B micro-panel: kc steps of `nr` floats, b[k * nr + j] = op(B)[k, j]; columns past
//                  the matrix edge are zero.
// A micro-kernel computes the rows x cols corner of the mr x nr product of one A and
// one B micro-panel and writes it to C (row-major, leading dimension ldc):
//   C = alpha * (A B)          when add is false
//   C = alpha * (A B) + C      when add is true
#pragma once
#include <cstdint>

namespace finlora {
namespace gemm {

using MicroKernelFn = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows,
                               int cols, float alpha, bool add);

// Optional packers tuned for one instruction set. Each packs op(X)[r, c] =
// x[r * rs + c * cs] into the layouts above and returns false, packing nothing, for a
// layout it does not handle (the caller then packs with the portable loops).
//   pack_a: an mc x kc block of op(A) into ceil(mc / mr) micro-panels
//   pack_b: one micro-panel, kc x cols of op(B) with cols <= nr
using PackAFn = bool (*)(const float* a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, float* dst);
using PackBF32Fn = bool (*)(const float* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst);
using PackBBf16Fn = bool (*)(const uint16_t* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst);

// Optional dot-product routine for products where one side is narrow (at most
// kNarrowMaxN = 16 rows or columns: LoRA's rank, a few decoding rows) and both
// operands run contiguously along K. There each element of the wide operand meets at
// most 16 of the other, so transposing it into panels would cost as much as the
// arithmetic; it is read once, in place:
//   c[i * c_rs + j * c_cs] = alpha * sum_k x[i * ldx + k] * y[j * ldy + k]  (+ c when add)
// for i < rows, j < n <= kNarrowMaxN. x is f32 or bf16 (x_bf16); y is f32.
constexpr int64_t kNarrowMaxN = 16;
using NarrowFn = void (*)(const void* x, bool x_bf16, int64_t ldx, const float* y, int64_t ldy, int64_t K, int64_t n,
                          float* c, int64_t c_rs, int64_t c_cs, int64_t rows, float alpha, bool add);

struct MicroKernel {
  const char* name;
  int mr, nr;           // register tile: rows of C by columns of C
  int64_t mc, kc, nc;   // cache blocks: A block mc x kc (L2), B block kc x nc (L3)
  MicroKernelFn run;
  PackAFn pack_a;       // each may be nullptr
  PackBF32Fn pack_b_f32;
  PackBBf16Fn pack_b_bf16;
  NarrowFn narrow;
};

// Each returns nullptr when this build has no such kernel (not x86-64).
const MicroKernel* avx512_micro_kernel();
const MicroKernel* avx2_micro_kernel();
const MicroKernel* scalar_micro_kernel();

}  // namespace gemm
}  // namespace finlora
