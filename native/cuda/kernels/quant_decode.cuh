// Decoding a quantized weight (native/common/quant_format.h's QWeight) eight values at
// a time on the GPU, for the kernels that read W straight from its codes:
// quant_matmul.cu (the decode into scratch, the GEMV) and dora_norm.cu (DoRA's norm
// over a quantized base). The values are QWeight::at's, bit for bit.
#pragma once
#include <cstdint>

#include "kernel.h"
#include "quant_format.h"

namespace finlora {
namespace cuda {

// W[r, c .. c + 7] (c and cols multiples of 8; for NF4 a block size that is too, so
// the eight share a block): one 4-byte load of nibbles or 8-byte load of int8 codes and
// one scale; the values of QWeight::at.
__device__ __forceinline__ void decode8_at(const quant::QWeight& w, int64_t r, int64_t c, float (&v)[8]) {
  const int64_t f = r * w.cols + c;
  if (w.format == quant::kInt8) {
    const uint2 q = *reinterpret_cast<const uint2*>(w.cb + f);
    const float s = w.row_scale(r);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const uint32_t word = e < 4 ? q.x : q.y;
      v[e] = __fmul_rn(static_cast<float>(static_cast<int8_t>((word >> (8 * (e & 3))) & 0xffu)), s);
    }
  } else {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(w.packed + (f >> 1));
    const float s = w.block_scale(f / w.blocksize);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint32_t byte = (u >> (8 * k)) & 0xffu;
      v[2 * k] = __fmul_rn(w.code[byte >> 4], s);
      v[2 * k + 1] = __fmul_rn(w.code[byte & 15u], s);
    }
  }
}

// Whether decode8_at may read W at column offsets that are multiples of 8.
inline bool decodes_by8(const quant::QWeight& w) {
  return w.cols % 8 == 0 && (w.format == quant::kInt8 ? (reinterpret_cast<uintptr_t>(w.cb) & 7u) == 0
                                                     : w.blocksize % 8 == 0 && (reinterpret_cast<uintptr_t>(w.packed) & 3u) == 0);
}

}  // namespace cuda
}  // namespace finlora
