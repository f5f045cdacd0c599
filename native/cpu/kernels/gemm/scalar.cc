// Portable GEMM micro-kernel: a 4 x 8 tile of C in plain C++ accumulators, written so
// that any compiler can keep them in registers and vectorise the 8-wide inner loop
// with whatever baseline SIMD it targets (4 x 8 fits the 16 registers of baseline
// x86-64; a 4 x 16 tile spilled and ran five times slower). The fallback on CPUs
// without AVX2 and on other architectures; tests force it with setIsa('scalar').
// Layouts and the C update rule: gemm.h.
#include "gemm.h"

namespace finlora {
namespace gemm {
namespace {

constexpr int MR = 4;
constexpr int NR = 8;

template <int R>
void tile(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t ldc,
          int cols, float alpha, bool add) {
  float acc[R][NR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    const float* bk = b + k * NR;
    for (int i = 0; i < R; ++i) {
      const float ai = a[k * MR + i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * bk[j];
    }
  }
  for (int i = 0; i < R; ++i) {
    float* row = c + i * ldc;
    if (add) {
      for (int j = 0; j < cols; ++j) row[j] += alpha * acc[i][j];
    } else {
      for (int j = 0; j < cols; ++j) row[j] = alpha * acc[i][j];
    }
  }
}

void run(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols, float alpha,
         bool add) {
  switch (rows) {
    case 4: return tile<4>(kc, a, b, c, ldc, cols, alpha, add);
    case 3: return tile<3>(kc, a, b, c, ldc, cols, alpha, add);
    case 2: return tile<2>(kc, a, b, c, ldc, cols, alpha, add);
    default: return tile<1>(kc, a, b, c, ldc, cols, alpha, add);
  }
}

const MicroKernel kKernel{"scalar 4x8", MR, NR, 128, 256, 4096, run, nullptr, nullptr, nullptr, nullptr};

}  // namespace

const MicroKernel* scalar_micro_kernel() { return &kKernel; }

}  // namespace gemm
}  // namespace finlora
