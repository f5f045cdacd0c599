// doraScale: the output scaling of a DoRA layer (Liu et al. 2024, "DoRA: Weight-
// Decomposed Low-Rank Adaptation"; src/adapters/lora/dora.ts),
//
//   y = (base + s·lora) ⊙ g,   g = m / ‖W + s·B·A‖ per output feature,
//
// and its backward, one pass each. Composed from binary ops the forward is three
// passes over [tokens, out] (lora·s, base + ..., ⊙ g) and the backward five plus a
// reduction; the layer runs on every adapted projection of every step.
//
// doraScale ints: [rows, cols]; floats: [s]
//   ptrs: [base [rows, cols], lora [rows, cols], g [cols], out [rows, cols] (=)]
// doraScaleBackward ints: [rows, cols]; floats: [s]
//   ptrs: [base, lora, g, dout [rows, cols], dbase (=), dlora (=), dg [cols] (=)]
//   dbase = dout ⊙ g, dlora = s · dbase, dg = Σ_rows dout ⊙ (base + s·lora) summed in f64.
//
// The loops are plain f32 arithmetic compiled for AVX-512, AVX2 and the baseline
// (target_clones); the backward gives each thread a band of columns and walks all
// rows, so every column's sum has one owner and no atomics.
#include <vector>

#include "kernel.h"

namespace finlora {
namespace {

FINLORA_CLONES void forward_row(const float* __restrict base, const float* __restrict lora, const float* __restrict g, float* __restrict out,
                                int64_t n, float s) {
  for (int64_t c = 0; c < n; ++c) out[c] = (base[c] + lora[c] * s) * g[c];
}

FINLORA_CLONES void backward_row(const float* __restrict base, const float* __restrict lora, const float* __restrict g,
                                 const float* __restrict dout, float* __restrict dbase, float* __restrict dlora, double* __restrict dg,
                                 int64_t n, float s) {
  for (int64_t c = 0; c < n; ++c) {
    const float d = dout[c];
    const float db = d * g[c];
    dbase[c] = db;
    dlora[c] = db * s;
    dg[c] += static_cast<double>(d * (base[c] + lora[c] * s));
  }
}

void dora_scale_kernel(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1];
  const float s = static_cast<float>(a.floats[0]);
  const float* base = static_cast<const float*>(a.ptrs[0]);
  const float* lora = static_cast<const float*>(a.ptrs[1]);
  const float* g = static_cast<const float*>(a.ptrs[2]);
  float* out = static_cast<float*>(a.ptrs[3]);
  parallel_for(rows, 1 + (1 << 14) / (cols + 1), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) forward_row(base + r * cols, lora + r * cols, g, out + r * cols, cols, s);
  });
}

void dora_scale_backward_kernel(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1];
  const float s = static_cast<float>(a.floats[0]);
  const float* base = static_cast<const float*>(a.ptrs[0]);
  const float* lora = static_cast<const float*>(a.ptrs[1]);
  const float* g = static_cast<const float*>(a.ptrs[2]);
  const float* dout = static_cast<const float*>(a.ptrs[3]);
  float* dbase = static_cast<float*>(a.ptrs[4]);
  float* dlora = static_cast<float*>(a.ptrs[5]);
  float* dg = static_cast<float*>(a.ptrs[6]);
  // Threads take runs of 64-column bands (whole cache lines) and walk every row.
  const int64_t bands = (cols + 63) / 64;
  parallel_for(bands, 1, [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * 64, c1 = b1 * 64 < cols ? b1 * 64 : cols, n = c1 - c0;
    std::vector<double> acc(n, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * cols + c0;
      backward_row(base + o, lora + o, g + c0, dout + o, dbase + o, dlora + o, acc.data(), n, s);
    }
    for (int64_t c = 0; c < n; ++c) dg[c0 + c] = static_cast<float>(acc[c]);
  });
}

}  // namespace

FINLORA_KERNEL("doraScale", dora_scale_kernel)
FINLORA_KERNEL("doraScaleBackward", dora_scale_backward_kernel)

}  // namespace finlora
