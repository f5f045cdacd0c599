// AVX2 + FMA GEMM micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators (of 16
// registers), one broadcast of A and two 8-float vectors of B per k step. Corners with
// fewer rows or at most 8 columns get their own unrolled instances; packers with 8 x 8
// in-register transposes for row-major A and transposed B (f32 only: bf16 B takes the
// portable loops). The kernels are gemm/x86.h's, shared with AVX-512, over the traits
// below; compiled with a target attribute so the addon builds for baseline x86-64, and
// used only when finlora::isa() allows. Layouts and the C update rule: gemm.h.
#include "gemm.h"

#if defined(__x86_64__)
#include "x86.h"

namespace finlora {
namespace gemm {
namespace {

constexpr int MR = 6;
constexpr int NR = 16;

struct Avx2Gemm : simd::Avx2Regs {
  using Lanes = __m256i;  // all-ones lanes, as maskload / maskstore take them
  static constexpr bool kPrefetchC = false;
  static constexpr bool kPrefetchA = false;
  FINLORA_AVX2_TARGET static inline Lanes first_lanes(int64_t n) { return simd::first_lanes8(n); }
  FINLORA_AVX2_TARGET static inline Lanes tail_mask(int t) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(t), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  FINLORA_AVX2_TARGET static inline F broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  FINLORA_AVX2_TARGET static inline F load_aligned(const float* p) { return _mm256_load_ps(p); }
  FINLORA_AVX2_TARGET static inline void store_aligned(float* p, const F& v) { _mm256_store_ps(p, v); }
  FINLORA_AVX2_TARGET static inline F load(const float* p, const Lanes& m) { return _mm256_maskload_ps(p, m); }
  FINLORA_AVX2_TARGET static inline void store(float* p, const Lanes& m, const F& v) { _mm256_maskstore_ps(p, m, v); }
  // Full vectors skip the masks.
  FINLORA_AVX2_TARGET static inline void store_cols(float* p, F r, bool add, bool last, int tail, const Lanes& m) {
    if (!last || tail == 8) {
      if (add) r = _mm256_add_ps(r, _mm256_loadu_ps(p));
      _mm256_storeu_ps(p, r);
    } else {
      if (add) r = _mm256_add_ps(r, _mm256_maskload_ps(p, m));
      _mm256_maskstore_ps(p, m, r);
    }
  }
};

struct Tiles {
  template <int R, int NV>
  FINLORA_AVX2_FN static void run(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                                  int64_t ldc, int cols, float alpha, bool add) {
    x86::tile<Avx2Gemm, MR, R, NV>(kc, a, b, c, ldc, cols, alpha, add);
  }
};

FINLORA_AVX2_FN bool pack_a(const float* a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, float* dst) {
  return x86::pack_a<Avx2Gemm, MR>(a, rs, cs, mc, kc, dst);
}

FINLORA_AVX2_FN bool pack_b_f32(const float* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  return x86::pack_b<Avx2Gemm>(b, rs, cs, kc, cols, dst);
}

const MicroKernel kKernel{"avx2 6x16", MR, NR, 144, 256, 4096, x86::micro_kernel<Tiles, MR, 8>, pack_a, pack_b_f32, nullptr,
                          nullptr};

}  // namespace

const MicroKernel* avx2_micro_kernel() { return &kKernel; }

}  // namespace gemm
}  // namespace finlora

#else

namespace finlora {
namespace gemm {
const MicroKernel* avx2_micro_kernel() { return nullptr; }
}  // namespace gemm
}  // namespace finlora

#endif
