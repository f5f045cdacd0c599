// reduce: sum or max over the middle axis of x viewed as [outer, n, inner] into
// out [outer, inner]. Sums accumulate in f64 so long reductions (norms, losses,
// gradient sums over a batch) keep full f32 accuracy; max propagates NaN.
//
// ints: [op (0 sum, 1 max), outer, n, inner]; ptrs: [x, out]
//
// inner == 1 reduces contiguous rows; inner > 1 walks the n rows of each outer slice
// once, adding every row into an f64 accumulator row of up to kBlock columns, so
// memory is read in order instead of one strided column at a time. When there are
// few such tasks and n is long, n is split into parts whose partial results are
// combined in a fixed order; the split depends only on the shape, so results do not
// change with the thread count. AVX-512 / AVX2 paths are chosen by isa().
#include "simd_math.h"  // first: it sets warning state around <immintrin.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernel.h"

namespace finlora {
namespace {

constexpr int64_t kBlock = 512;          // accumulator columns per task (4 KiB of f64)
constexpr int64_t kPartWork = 1 << 16;   // elements per task before n is split
constexpr int64_t kMaxParts = 8;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float nanmax(float m, float v) { return (v > m || std::isnan(v)) ? v : m; }
inline double nanmax(double m, double v) { return (v > m || std::isnan(v)) ? v : m; }

// ---------------------------------------------------------------- scalar

double row_sum_scalar(const float* x, int64_t n) {
  double a[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) a[k] += x[i + k];
  for (; i < n; ++i) a[0] += x[i];
  return (a[0] + a[1]) + (a[2] + a[3]);
}

float row_max_scalar(const float* x, int64_t n) {
  float m = kNegInf;
  for (int64_t i = 0; i < n; ++i) m = nanmax(m, x[i]);
  return m;
}

// acc[j] (+)= x[i * stride + j] over rows i < n, for j < w
void col_sum_scalar(const float* x, int64_t n, int64_t stride, int64_t w, double* acc) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < w; ++j) acc[j] += x[i * stride + j];
}

void col_max_scalar(const float* x, int64_t n, int64_t stride, int64_t w, float* acc) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < w; ++j) acc[j] = nanmax(acc[j], x[i * stride + j]);
}

// ---------------------------------------------------------------- vector

#if defined(__x86_64__)

template <class V>
inline double row_sum(const float* x, int64_t n) {
  using D = typename V::D;
  constexpr int W = V::W;
  D a0 = V::dzero(), a1 = V::dzero(), a2 = V::dzero(), a3 = V::dzero();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const auto v0 = V::load(x + i), v1 = V::load(x + i + W);
    a0 = V::dadd(a0, V::widen_lo(v0));
    a1 = V::dadd(a1, V::widen_hi(v0));
    a2 = V::dadd(a2, V::widen_lo(v1));
    a3 = V::dadd(a3, V::widen_hi(v1));
  }
  for (; i + W <= n; i += W) {
    const auto v0 = V::load(x + i);
    a0 = V::dadd(a0, V::widen_lo(v0));
    a1 = V::dadd(a1, V::widen_hi(v0));
  }
  double s = V::dsum(V::dadd(V::dadd(a0, a1), V::dadd(a2, a3)));
  for (; i < n; ++i) s += x[i];
  return s;
}

// NaN-propagating lane max: x86 max returns its second operand when either is NaN,
// so max(v, m) keeps a NaN already in m, and the select keeps a NaN arriving in v.
template <class V>
inline typename V::F max_step(const typename V::F& m, const typename V::F& v) {
  return V::select(V::isnan(v), v, V::max(v, m));
}

template <class V>
inline float row_max(const float* x, int64_t n) {
  constexpr int W = V::W;
  auto m = V::set1(kNegInf);
  int64_t i = 0;
  for (; i + W <= n; i += W) m = max_step<V>(m, V::load(x + i));
  float lanes[W];
  V::store(lanes, m);
  float r = kNegInf;
  for (int k = 0; k < W; ++k) r = nanmax(r, lanes[k]);
  for (; i < n; ++i) r = nanmax(r, x[i]);
  return r;
}

// Four rows per pass over the accumulator row, so its loads and stores cost a quarter.
template <class V>
inline void col_sum(const float* x, int64_t n, int64_t stride, int64_t w, double* acc) {
  constexpr int W = V::W;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* r0 = x + i * stride;
    const float* r1 = r0 + stride;
    const float* r2 = r1 + stride;
    const float* r3 = r2 + stride;
    int64_t j = 0;
    for (; j + W <= w; j += W) {
      const auto v0 = V::load(r0 + j), v1 = V::load(r1 + j), v2 = V::load(r2 + j), v3 = V::load(r3 + j);
      const auto lo = V::dadd(V::dadd(V::widen_lo(v0), V::widen_lo(v1)), V::dadd(V::widen_lo(v2), V::widen_lo(v3)));
      const auto hi = V::dadd(V::dadd(V::widen_hi(v0), V::widen_hi(v1)), V::dadd(V::widen_hi(v2), V::widen_hi(v3)));
      V::dstore(acc + j, V::dadd(V::dload(acc + j), lo));
      V::dstore(acc + j + W / 2, V::dadd(V::dload(acc + j + W / 2), hi));
    }
    for (; j < w; ++j) acc[j] += (static_cast<double>(r0[j]) + r1[j]) + (static_cast<double>(r2[j]) + r3[j]);
  }
  for (; i < n; ++i) {
    const float* row = x + i * stride;
    int64_t j = 0;
    for (; j + W <= w; j += W) {
      const auto v = V::load(row + j);
      V::dstore(acc + j, V::dadd(V::dload(acc + j), V::widen_lo(v)));
      V::dstore(acc + j + W / 2, V::dadd(V::dload(acc + j + W / 2), V::widen_hi(v)));
    }
    for (; j < w; ++j) acc[j] += row[j];
  }
}

template <class V>
inline void col_max(const float* x, int64_t n, int64_t stride, int64_t w, float* acc) {
  constexpr int W = V::W;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * stride;
    int64_t j = 0;
    for (; j + W <= w; j += W) V::store(acc + j, max_step<V>(V::load(acc + j), V::load(row + j)));
    for (; j < w; ++j) acc[j] = nanmax(acc[j], row[j]);
  }
}

FINLORA_AVX512_FN double row_sum_avx512(const float* x, int64_t n) { return row_sum<simd::Avx512>(x, n); }
FINLORA_AVX512_FN float row_max_avx512(const float* x, int64_t n) { return row_max<simd::Avx512>(x, n); }
FINLORA_AVX512_FN void col_sum_avx512(const float* x, int64_t n, int64_t s, int64_t w, double* acc) {
  col_sum<simd::Avx512>(x, n, s, w, acc);
}
FINLORA_AVX512_FN void col_max_avx512(const float* x, int64_t n, int64_t s, int64_t w, float* acc) {
  col_max<simd::Avx512>(x, n, s, w, acc);
}
FINLORA_AVX2_FN double row_sum_avx2(const float* x, int64_t n) { return row_sum<simd::Avx2>(x, n); }
FINLORA_AVX2_FN float row_max_avx2(const float* x, int64_t n) { return row_max<simd::Avx2>(x, n); }
FINLORA_AVX2_FN void col_sum_avx2(const float* x, int64_t n, int64_t s, int64_t w, double* acc) {
  col_sum<simd::Avx2>(x, n, s, w, acc);
}
FINLORA_AVX2_FN void col_max_avx2(const float* x, int64_t n, int64_t s, int64_t w, float* acc) {
  col_max<simd::Avx2>(x, n, s, w, acc);
}

#endif

struct Ops {
  double (*row_sum)(const float*, int64_t);
  float (*row_max)(const float*, int64_t);
  void (*col_sum)(const float*, int64_t, int64_t, int64_t, double*);
  void (*col_max)(const float*, int64_t, int64_t, int64_t, float*);
};

Ops ops_for(Isa level) {
#if defined(__x86_64__)
  if (level == Isa::Avx512) return {row_sum_avx512, row_max_avx512, col_sum_avx512, col_max_avx512};
  if (level == Isa::Avx2) return {row_sum_avx2, row_max_avx2, col_sum_avx2, col_max_avx2};
#endif
  (void)level;
  return {row_sum_scalar, row_max_scalar, col_sum_scalar, col_max_scalar};
}

// Reduces rows [i0, i1) of outer slice o, columns [j0, j0 + w), into res[0, w).
void reduce_part(const Ops& f, bool sum, const float* x, int64_t o, int64_t n, int64_t inner, int64_t i0, int64_t i1,
                 int64_t j0, int64_t w, double* res) {
  const float* base = x + (o * n + i0) * inner + j0;
  const int64_t rows = i1 - i0;
  if (inner == 1) {
    res[0] = sum ? f.row_sum(base, rows) : static_cast<double>(f.row_max(base, rows));
    return;
  }
  if (sum) {
    for (int64_t j = 0; j < w; ++j) res[j] = 0;
    f.col_sum(base, rows, inner, w, res);
  } else {
    float acc[kBlock];
    for (int64_t j = 0; j < w; ++j) acc[j] = kNegInf;
    f.col_max(base, rows, inner, w, acc);
    for (int64_t j = 0; j < w; ++j) res[j] = acc[j];
  }
}

void reduce_kernel(const KernelArgs& a) {
  const int64_t op = a.ints[0], outer = a.ints[1], n = a.ints[2], inner = a.ints[3];
  const bool sum = op == 0;
  const float* x = static_cast<const float*>(a.ptrs[0]);
  float* out = static_cast<float*>(a.ptrs[1]);
  if (outer <= 0 || inner <= 0) return;
  if (n <= 0) {  // an empty reduction: the identity
    for (int64_t i = 0; i < outer * inner; ++i) out[i] = sum ? 0.0f : kNegInf;
    return;
  }
  const Ops f = ops_for(isa());
  const int64_t width = inner < kBlock ? inner : kBlock;
  const int64_t jblocks = (inner + kBlock - 1) / kBlock;
  const int64_t tasks = outer * jblocks;

  int64_t parts = 1;
  if (tasks < kMaxParts) {
    const int64_t by_work = n * width / kPartWork;
    parts = by_work < 1 ? 1 : by_work > kMaxParts ? kMaxParts : by_work;
  }
  const int64_t part_len = (n + parts - 1) / parts;
  parts = (n + part_len - 1) / part_len;

  const int64_t work = part_len * width;
  const int64_t grain = 1 + (1 << 15) / work;

  if (parts == 1) {
    parallel_for(tasks, grain, [&](int64_t t0, int64_t t1) {
      double res[kBlock];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t o = t / jblocks, j0 = (t % jblocks) * kBlock;
        const int64_t w = inner - j0 < kBlock ? inner - j0 : kBlock;
        reduce_part(f, sum, x, o, n, inner, 0, n, j0, w, res);
        for (int64_t j = 0; j < w; ++j) out[o * inner + j0 + j] = static_cast<float>(res[j]);
      }
    });
    return;
  }

  // partial[(o * parts + p) * inner + j], combined over p in order below
  std::vector<double> partial(static_cast<size_t>(outer * parts * inner));
  parallel_for(tasks * parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t % parts, tb = t / parts;
      const int64_t o = tb / jblocks, j0 = (tb % jblocks) * kBlock;
      const int64_t w = inner - j0 < kBlock ? inner - j0 : kBlock;
      const int64_t i0 = p * part_len, i1 = i0 + part_len < n ? i0 + part_len : n;
      reduce_part(f, sum, x, o, n, inner, i0, i1, j0, w, &partial[(o * parts + p) * inner + j0]);
    }
  });
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t j = 0; j < inner; ++j) {
      double r = partial[(o * parts) * inner + j];
      for (int64_t p = 1; p < parts; ++p) {
        const double v = partial[(o * parts + p) * inner + j];
        r = sum ? r + v : nanmax(r, v);
      }
      out[o * inner + j] = static_cast<float>(r);
    }
  }
}

// sumSquares: out[t] = Σ x_t[i]² for several contiguous f32 tensors in one call (the
// global gradient norm's per-tensor sums). Each square is rounded to f32 and the sum of
// one tensor is taken exactly as reduce's sum over one row of n takes it (the same
// split into parts, the same partial sums combined in the same order), so the result
// is bit for bit that of unary square followed by reduce sum.
//
// ints: [count, n_0, ..., n_{count-1}]; ptrs: [x_0, ..., x_{count-1}, out]
void sum_squares_kernel(const KernelArgs& a) {
  const int64_t count = a.ints[0];
  float* out = static_cast<float*>(a.ptrs[count]);
  const Ops f = ops_for(isa());
  parallel_for(count, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> sq;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = a.ints[1 + t];
      const float* x = static_cast<const float*>(a.ptrs[t]);
      if (n <= 0) {
        out[t] = 0.0f;
        continue;
      }
      sq.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) sq[i] = x[i] * x[i];
      // reduce_kernel's split for one task of width 1.
      const int64_t by_work = n / kPartWork;
      int64_t parts = by_work < 1 ? 1 : by_work > kMaxParts ? kMaxParts : by_work;
      const int64_t part_len = (n + parts - 1) / parts;
      parts = (n + part_len - 1) / part_len;
      double r = f.row_sum(sq.data(), part_len < n ? part_len : n);
      for (int64_t p = 1; p < parts; ++p) {
        const int64_t i0 = p * part_len, i1 = i0 + part_len < n ? i0 + part_len : n;
        r += f.row_sum(sq.data() + i0, i1 - i0);
      }
      out[t] = static_cast<float>(r);
    }
  });
}

}  // namespace

FINLORA_KERNEL("reduce", reduce_kernel)
FINLORA_KERNEL("sumSquares", sum_squares_kernel)

}  // namespace finlora
