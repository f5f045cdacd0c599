// What the AVX2 and AVX-512 dequantizers (dequant_avx2.cc, dequant_avx512.cc) share,
// written once over simd_x86.h's register traits V and instantiated from their
// target-specific entry points (simd_math.h's FINLORA_*_FN, whose `flatten` inlines
// it there).
#pragma once
#include <algorithm>
#include <cstdint>

#include "quant.h"
#include "simd_x86.h"

#if defined(__x86_64__)

namespace finlora {
namespace quant {
namespace x86 {

// quant.h's pack_transposed by way of rows: each of the `rows` row stretches is decoded
// by the ISA's dequant_row into scratch (rows padded with zeros to a multiple of W),
// then laid across the panel through W x W in-register transposes. nr is a multiple of W.
template <class V, class DequantRow>
inline void pack_transposed_from_rows(const QWeight& w, int64_t r0, int rows, int64_t c0, int64_t len, int nr,
                                      float* dst, float* scratch, DequantRow dequant_row) {
  using F = typename V::F;
  constexpr int W = V::W;
  const int64_t ld = (len + W - 1) / W * W;
  for (int j = 0; j < rows; ++j) {
    float* s = scratch + j * ld;
    dequant_row(w, r0 + j, c0, len, s);
    for (int64_t k = len; k < ld; ++k) s[k] = 0.0f;
  }
  const F zero = V::zero();
  for (int jg = 0; jg < nr; jg += W) {
    const int live = std::min(W, std::max(0, rows - jg));
    for (int64_t k0 = 0; k0 < len; k0 += W) {
      F r[W];
      for (int i = 0; i < W; ++i) r[i] = i < live ? V::load(scratch + (jg + i) * ld + k0) : zero;
      if (live > 0) V::transpose(r);
      const int64_t kn = std::min<int64_t>(W, len - k0);
      for (int64_t i = 0; i < kn; ++i) V::store(dst + (k0 + i) * nr + jg, r[i]);
    }
  }
}

}  // namespace x86
}  // namespace quant
}  // namespace finlora

#endif  // __x86_64__
