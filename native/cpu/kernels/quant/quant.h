// Frozen weights stored in bitsandbytes' formats as the CPU's quantized kernels see
// them (qmatmul.cc, quantize.cc): the per-ISA routines that turn a stretch of one row
// back into f32 (dequant_*.cc) and the AVX-512 quantizers. The formats, the weight
// operands (QWeight) and their arithmetic are native/common/quant_format.h's, shared
// with the CUDA kernels.
#pragma once
#include <cstdint>

#include "kernel.h"
#include "quant_format.h"

namespace finlora {
namespace quant {

// One instruction-set level's routines.
struct QuantIsa {
  const char* name;
  // out[i] = W[r, c0 + i] for i < len (f32, the dequantized weight).
  void (*dequant_row)(const QWeight& w, int64_t r, int64_t c0, int64_t len, float* out);
  // A GEMM B panel from rows of W laid across (a Linear's forward, op(W) = Wᵀ):
  // dst[k * nr + j] = W[r0 + j, c0 + k] for k < len, j < rows, and 0 for rows <= j < nr.
  // scratch holds at least nr * (len rounded up to 16) floats.
  void (*pack_transposed)(const QWeight& w, int64_t r0, int rows, int64_t c0, int64_t len, int nr, float* dst,
                          float* scratch);
  // A GEMM B panel from rows of W as they are (a Linear's input gradient, op(W) = W):
  // dst[k * nr + j] = W[r0 + k, c0 + j] for k < kc, j < cols, and 0 for cols <= j < nr.
  void (*pack_rows)(const QWeight& w, int64_t r0, int64_t kc, int64_t c0, int cols, int nr, float* dst);
  // acc[m * 4 + j] += sum_i a[m * lda + i] * w[j][i], i < len, j < 4, m < M.
  void (*dot4)(const float* a, int64_t lda, int64_t M, const float* const w[4], int64_t len, float* acc);
  // out[m * ldo + i] += sum_j coef[m * 4 + j] * w[j][i], j < 4, i < len, m < M.
  void (*axpy4)(const float* coef, int64_t M, const float* const w[4], int64_t len, float* out, int64_t ldo);
};

// The portable pack_transposed: decode each row stretch, then lay it across element by
// element. The SIMD levels fall back to it when nr is not a multiple of their width.
void pack_transposed_scalar(const QWeight& w, int64_t r0, int rows, int64_t c0, int64_t len, int nr, float* dst,
                            float* scratch);

// The portable pack_rows: one dequant_row per row of the panel.
void pack_rows_scalar(const QWeight& w, int64_t r0, int64_t kc, int64_t c0, int cols, int nr, float* dst);

// nullptr when this build has no such level (not x86-64).
const QuantIsa* avx512_quant();
const QuantIsa* avx2_quant();
const QuantIsa* scalar_quant();

// AVX-512 load-time quantizers (quantize_avx512.cc) for kernels/quantize.cc, which calls
// them when isa() allows; false leaves the case to its portable loop. One int8 row
// (tmp holds cols floats); one full 4-bit block of a 16-entry code's 15 midpoints.
bool quantize_int8_row_avx512(const void* w, int64_t dtype, int64_t offset, int64_t cols, int8_t* q, float* absmax,
                              float* tmp);
bool quantize_block4_avx512(const void* x, int64_t dtype, int64_t start, int64_t bs, const float* bounds,
                            uint8_t* packed, float* absmax);

// The routines isa() selects.
const QuantIsa& pick_quant_isa();

// Helpers the per-ISA files share: the flat-index walk over nf4 blocks. `run` is
// called with (flat index, count, scale, out) for each stretch inside one block.
template <class Run>
inline void for_each_block_run(const QWeight& w, int64_t r, int64_t c0, int64_t len, float* out, Run run) {
  int64_t f = r * w.cols + c0;
  const int64_t end = f + len;
  while (f < end) {
    const int64_t b = f / w.blocksize;
    const int64_t stop = (b + 1) * w.blocksize < end ? (b + 1) * w.blocksize : end;
    run(f, stop - f, w.block_scale(b), out);
    out += stop - f;
    f = stop;
  }
}

}  // namespace quant
}  // namespace finlora
