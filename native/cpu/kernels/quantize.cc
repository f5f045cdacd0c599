// Quantization at load time into bitsandbytes' formats, with its reference numerics
// (bitsandbytes/backends/default/ops.py: int8_vectorwise_quant, quantize_blockwise,
// quantize_4bit; bitsandbytes/nn/modules.py: Int8Params._quantize).
//
// quantizeInt8: w [rows, cols] (f32, bf16 or f16) -> cb int8 [rows, cols], scb f32 [rows].
//   Each value is first rounded to f16 (Int8Params casts the weight to float16 before
//   quantizing), scb[r] = max_c |w[r, c]|, cb = round_half_even(w * (127 / scb[r])) in
//   f32. An all-zero row gives scb 0 and zero codes.
//   ints: [rows, cols, dtype]   ptrs: [w, cb, scb]
//
// quantizeBlockwise: x [n] (f32, bf16 or f16) cut into blocks of `blocksize`; per block
//   absmax = max |x|; scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1) (the last,
//   partial block divides by its clamped absmax instead and stores that, as
//   bitsandbytes does); the code index is torch.bucketize(scaled, midpoints of the
//   sorted code), i.e. the nearest entry with ties going to the lower one.
//   pack4 = 1 stores two 4-bit indices per byte, element 2i in the high nibble, and
//   pads an odd count with the index of 0 (bitsandbytes pads `scaled` with a 0);
//   pack4 = 0 stores one uint8 index per value.
//   ints: [n, dtype, codeSize, blocksize, pack4]   ptrs: [x, code, q, absmax]
//
// The per-value arithmetic is native/common/quant_format.h's, shared with the CUDA
// kernel. With AVX-512, int8 rows and full 4-bit blocks go through
// quant/quantize_avx512.cc, which gives the same codes.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernel.h"
#include "quant/quant.h"

namespace finlora {
namespace {

void quantize_int8_kernel(const KernelArgs& args) {
  quant::Int8Job job;
  if (!quant::parse_quantize_int8(args, job)) return;
  const int64_t rows = job.rows, cols = job.cols, dtype = job.dtype;
  const void* w = args.ptrs[0];
  int8_t* cb = static_cast<int8_t*>(args.ptrs[1]);
  float* scb = static_cast<float*>(args.ptrs[2]);
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, cols));
  const bool avx512 = isa() == Isa::Avx512;
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> h(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      if (avx512 && quant::quantize_int8_row_avx512(w, dtype, r * cols, cols, cb + r * cols, scb + r, h.data())) continue;
      float absmax = 0.0f;
      for (int64_t c = 0; c < cols; ++c) {
        h[c] = f16_to_f32(f32_to_f16(load_as_f32(w, dtype, r * cols + c)));
        absmax = std::max(absmax, std::fabs(h[c]));
      }
      scb[r] = absmax;
      int8_t* q = cb + r * cols;
      if (absmax == 0.0f) {
        std::fill(q, q + cols, static_cast<int8_t>(0));
        continue;
      }
      const float scale = quant::int8_scale(absmax);
      for (int64_t c = 0; c < cols; ++c) q[c] = quant::int8_code(h[c], scale);
    }
  });
}

void quantize_blockwise_kernel(const KernelArgs& args) {
  quant::BlockwiseJob job;
  if (!quant::parse_quantize_blockwise(args, job)) return;
  const int64_t n = job.n, dtype = job.dtype, code_size = job.code_size, bs = job.blocksize;
  const bool pack4 = job.pack4;
  const void* x = args.ptrs[0];
  const float* code = static_cast<const float*>(args.ptrs[1]);
  uint8_t* q = static_cast<uint8_t*>(args.ptrs[2]);
  float* absmax = static_cast<float*>(args.ptrs[3]);
  const int nb = static_cast<int>(code_size - 1);
  std::vector<float> bounds(static_cast<size_t>(nb));
  for (int i = 0; i < nb; ++i) bounds[i] = quant::code_midpoint(code, i);
  const int zero_index = quant::bucket(bounds.data(), nb, 0.0f);
  const int64_t blocks = (n + bs - 1) / bs;
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / bs);
  const bool fast4 = isa() == Isa::Avx512 && pack4 && code_size == 16;
  parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * bs, len = std::min(bs, n - start);
      if (fast4 && len == bs && quant::quantize_block4_avx512(x, dtype, start, bs, bounds.data(), q, absmax + b)) continue;
      float am = 0.0f;
      for (int64_t i = 0; i < len; ++i) am = std::max(am, std::fabs(load_as_f32(x, dtype, start + i)));
      const bool partial = len < bs;
      const float clamped = std::max(am, 1e-38f);
      absmax[b] = partial ? clamped : am;
      const float inv = 1.0f / clamped;
      for (int64_t i = 0; i < len; ++i) {
        const int idx = quant::bucket(bounds.data(), nb, quant::block_scaled(load_as_f32(x, dtype, start + i), clamped, inv, partial));
        const int64_t e = start + i;
        if (!pack4) {
          q[e] = static_cast<uint8_t>(idx);
        } else if ((e & 1) == 0) {
          q[e >> 1] = static_cast<uint8_t>((idx << 4) | zero_index);  // the low nibble is overwritten unless e is last
        } else {
          q[e >> 1] = static_cast<uint8_t>((q[e >> 1] & 0xf0) | idx);
        }
      }
    }
  });
}

}  // namespace

FINLORA_KERNEL("quantizeInt8", quantize_int8_kernel)
FINLORA_KERNEL("quantizeBlockwise", quantize_blockwise_kernel)

}  // namespace finlora
