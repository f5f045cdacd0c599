// Portable dequantization routines (quant.h): the fallback without AVX2 and the
// reference path tests force with setIsa('scalar'). Dot products keep 8 partial sums
// so the compiler can vectorise them with baseline SIMD without reassociating.
#include "quant.h"

namespace finlora {
namespace quant {
namespace {

void dequant_row(const QWeight& w, int64_t r, int64_t c0, int64_t len, float* out) {
  if (w.format == kInt8) {
    const int8_t* q = w.cb + r * w.cols + c0;
    const float s = w.row_scale(r);
    for (int64_t i = 0; i < len; ++i) out[i] = static_cast<float>(q[i]) * s;
    return;
  }
  for_each_block_run(w, r, c0, len, out, [&](int64_t f, int64_t n, float s, float* o) {
    for (int64_t i = 0; i < n; ++i) o[i] = w.code[w.nibble(f + i)] * s;
  });
}

void dot4(const float* a, int64_t lda, int64_t M, const float* const w[4], int64_t len, float* acc) {
  for (int64_t m = 0; m < M; ++m) {
    const float* x = a + m * lda;
    for (int j = 0; j < 4; ++j) {
      float s[8] = {};
      int64_t i = 0;
      for (; i + 8 <= len; i += 8)
        for (int l = 0; l < 8; ++l) s[l] += x[i + l] * w[j][i + l];
      float t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
      for (; i < len; ++i) t += x[i] * w[j][i];
      acc[m * 4 + j] += t;
    }
  }
}

void axpy4(const float* coef, int64_t M, const float* const w[4], int64_t len, float* out, int64_t ldo) {
  for (int64_t m = 0; m < M; ++m) {
    const float a0 = coef[m * 4], a1 = coef[m * 4 + 1], a2 = coef[m * 4 + 2], a3 = coef[m * 4 + 3];
    float* o = out + m * ldo;
    for (int64_t i = 0; i < len; ++i) o[i] += a0 * w[0][i] + a1 * w[1][i] + a2 * w[2][i] + a3 * w[3][i];
  }
}

const QuantIsa kScalar{"scalar", dequant_row, pack_transposed_scalar, pack_rows_scalar, dot4, axpy4};

}  // namespace

void pack_rows_scalar(const QWeight& w, int64_t r0, int64_t kc, int64_t c0, int cols, int nr, float* dst) {
  const QuantIsa& qi = pick_quant_isa();
  for (int64_t k = 0; k < kc; ++k) {
    float* d = dst + k * nr;
    qi.dequant_row(w, r0 + k, c0, cols, d);
    for (int j = cols; j < nr; ++j) d[j] = 0.0f;
  }
}

void pack_transposed_scalar(const QWeight& w, int64_t r0, int rows, int64_t c0, int64_t len, int nr, float* dst,
                            float* scratch) {
  const QuantIsa& qi = pick_quant_isa();
  for (int j = 0; j < rows; ++j) qi.dequant_row(w, r0 + j, c0, len, scratch + j * len);
  for (int64_t k = 0; k < len; ++k) {
    float* d = dst + k * nr;
    const float* s = scratch + k;
    for (int j = 0; j < rows; ++j) d[j] = s[j * len];
    for (int j = rows; j < nr; ++j) d[j] = 0.0f;
  }
}

const QuantIsa* scalar_quant() { return &kScalar; }

const QuantIsa& pick_quant_isa() {
  const QuantIsa* q = nullptr;
  if (isa() == Isa::Avx512) q = avx512_quant();
  if (q == nullptr && isa() >= Isa::Avx2) q = avx2_quant();
  if (q == nullptr) q = scalar_quant();
  return *q;
}

}  // namespace quant
}  // namespace finlora
