// Frozen weights stored in bitsandbytes' formats, as the quantized kernels see them
// (qmatmul.cc, quantize.cc), and the per-ISA routines that turn a stretch of one row
// back into f32 (dequant_*.cc). The formats follow bitsandbytes' public source
// (bitsandbytes/functional.py and backends/default/ops.py):
//
//   int8  W [rows, cols] row-major int8 CB with one f32 absmax per row (SCB):
//         W[r, c] ~ CB[r, c] * SCB[r] / 127                       (int8_vectorwise_dequant)
//   nf4   the row-major flattening of W cut into blocks of `blocksize` values; value i
//         is code[nibble i] * absmax[i / blocksize], nibble i lives in byte i / 2, the
//         HIGH nibble for even i and the low one for odd i      (quantize_4bit: q[::2] << 4 | q[1::2])
//         With double quantization (compress_statistics) absmax itself is stored as
//         uint8 codes into a 256-entry map, in blocks of nested_blocksize, plus one
//         offset (the mean that was subtracted before quantizing):
//         absmax[b] = nested_code[q[b]] * nested_absmax[b / nested_blocksize] + offset
//
// Blocks run along the flattened weight, so when cols is not a multiple of blocksize
// a block straddles two rows; every routine here works from flat indices.
#pragma once
#include <cstdint>

#include "kernel.h"

namespace finlora {
namespace quant {

enum Format : int64_t { kInt8 = 0, kNf4 = 1 };

struct QWeight {
  Format format;
  int64_t rows, cols;
  // int8
  const int8_t* cb;
  const float* scb;
  // nf4
  const uint8_t* packed;
  const float* code;  // 16 entries
  int64_t blocksize;
  const float* absmax;     // f32 per block when !nested
  const uint8_t* qabsmax;  // uint8 per block when nested
  const float* nested_absmax;
  const float* nested_code;  // 256 entries
  int64_t nested_blocksize;
  float offset;
  bool nested;

  // The order of operations is bitsandbytes': (code * absmax2) rounded to f32, then
  // + offset. NOTE: GCC contracts a * b + c into an FMA in C++ by default (one rounding
  // instead of two, 1 ulp off bitsandbytes); the empty asm makes the product opaque.
  float block_scale(int64_t b) const {
    if (!nested) return absmax[b];
    float s = nested_code[qabsmax[b]] * nested_absmax[b / nested_blocksize];
#if defined(__x86_64__)
    asm("" : "+x"(s));
#endif
    return s + offset;
  }
};

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
