// attention: scaled dot-product attention with grouped-query heads, computed
// flash-style (Dao et al. 2022, FlashAttention; Dao 2023, FlashAttention-2): keys are
// visited in tiles with an online softmax, so no T x S score matrix is ever stored;
// only the per-row log-sum-exp is saved for backward. All arithmetic is f32.
//
// attention ints: [B, Hq, Hkv, T, S, D, causal, has_mask, then the (batch, head, row)
//   element strides of q, k, v and out]; floats: [scale]
//   ptrs: [q [B, Hq, T, D], k, v [B, Hkv, S, D], key_mask f32 [B, S] (ignored unless
//   has_mask), out [B, Hq, T, D] (=), lse [B, Hq, T] (=, contiguous)]
// attentionBackward ints: the same eight, then the strides of q, k, v, out, dout, dq,
//   dk and dv; floats: the same
//   ptrs: [q, k, v, key_mask, out, lse, dout, dq (=), dk (=), dv (=)]
//
// Every [., ., ., D] operand is a strided view whose last axis is contiguous: the model
// hands over heads as transposed views of its [B, T, H, D] projections and receives
// out and the gradients in that layout, so no head is copied on the way in or out.
//
// Query head h reads kv head h / (Hq / Hkv). With causal, query t (one of the last T
// of S positions) sees key s when s <= t + S - T. key_mask[b, s] == 0 hides key s. A
// row that sees no key gives out = 0 and lse = -inf, and passes no gradient.
//
// Work split. Forward: one task per (batch, query head, block of query rows); each task
// owns its output rows. Backward runs two passes so that no two threads write the same
// row: pass 1, per (batch, query head, query block), computes D = rowsum(dout * out) and
// dq; pass 2, per (batch, kv head, key block), loops over every query row of every query
// head in the group and accumulates dk and dv for its own keys. Both passes recompute
// the probabilities from q, k and lse; pass 2 recomputes the scores pass 1 already made,
// the price of having neither atomics nor per-thread copies of dq.
//
// Products run on register blocks of four rows: scores of four query rows against a
// transposed 64-key tile, and four accumulator rows updated from a shared row of V (or
// K, dout, q), so each value loaded from memory feeds four multiply-adds, not one.
#include <algorithm>
#include <cmath>
#include <vector>

#include "simd_math.h"  // first: it sets warning state around <immintrin.h>
#include "nn_simd.h"

namespace finlora {
namespace {

using namespace nn;

constexpr int64_t BK = 64;  // keys per tile: a transposed K tile is D x 64 floats
constexpr int RB = 4;       // rows per register block

typedef float v16f __attribute__((vector_size(64)));

// exp on 8 lanes, the kernels' bodies take it as a parameter: simd_math.h's (0.94 ulp,
// its Cody-Waite step exact only under FMA) in the AVX2 and AVX-512 variants, libm
// lane by lane in the baseline one, as the other kernels do.
#if defined(__x86_64__) && !defined(__clang__)
struct FmaExp {
  FINLORA_AVX2_FN static v8f exp8(const v8f& x) { return simd::exp<simd::Avx2>(x); }
};
#endif
struct LibmExp {
  FINLORA_INLINE static v8f exp8(v8f x) {
    v8f y;
    for (int k = 0; k < 8; ++k) y[k] = std::exp(x[k]);
    return y;
  }
};

FINLORA_INLINE v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
FINLORA_INLINE void store16(float* p, v16f v) { std::memcpy(p, &v, sizeof v); }
// NOTE: products below are written scalar * vector, which GCC broadcasts with one
// instruction; a 16-element initializer list compiles to sixteen masked broadcasts.

// A [B, H, rows, D] operand: element (b, h, i, d) at p[b * sb + h * sh + i * st + d].
struct View {
  const float* p;
  int64_t sb, sh, st;
  FINLORA_INLINE const float* head(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
};
struct OutView {
  float* p;
  int64_t sb, sh, st;
  FINLORA_INLINE float* head(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
};

struct Params {
  View q, k, v, out_in, dout;
  const float* mask;
  const float* lse_in;
  OutView out, dq, dk, dv;
  float* lse;
  float* rowdot;  // backward: D_i = dout_i . out_i, [B * Hq * T]
  int64_t B, Hq, Hkv, T, S, D;
  int64_t bq, nqb, nkb;  // query rows per block, query blocks, key blocks
  bool causal;
  float scale;
};

// Keys of tile [j0, j0 + nk) that query row i may see: [0, lim) (the mask is applied
// separately). Negative or zero when the row sees none of them.
FINLORA_INLINE int64_t visible(const Params& p, int64_t i, int64_t j0, int64_t nk) {
  if (!p.causal) return nk;
  const int64_t lim = i + (p.S - p.T) + 1 - j0;
  return lim < nk ? lim : nk;
}

// Last key any row in [i0, i1) may see, exclusive.
FINLORA_INLINE int64_t key_end(const Params& p, int64_t i1) {
  if (!p.causal) return p.S;
  const int64_t e = (i1 - 1) + (p.S - p.T) + 1;
  return e < 0 ? 0 : (e < p.S ? e : p.S);
}

// The query rows one forward or dq task covers: block qb of query head h in batch b
// (task = (b * Hq + h) * nqb + qb), rows [i0, i1), reading key/value head g.
struct QueryBlock {
  int64_t b, h, g, i0, i1, rows;
};
FINLORA_INLINE QueryBlock query_block(const Params& p, int64_t task) {
  const int64_t qb = task % p.nqb, h = (task / p.nqb) % p.Hq, b = task / (p.nqb * p.Hq);
  const int64_t i0 = qb * p.bq, i1 = std::min(p.T, i0 + p.bq);
  return {b, h, h / (p.Hq / p.Hkv), i0, i1, i1 - i0};
}

// Transposes rows [j0, j0 + nk) of a [S, D] matrix with row stride rs into
// t[d * BK + jj], zero-padding the tile to BK columns, so that a row's scores against
// the tile are vector FMAs with no horizontal sums.
FINLORA_INLINE void pack_t(const float* m, int64_t rs, int64_t j0, int64_t nk, int64_t D, float* t) {
  for (int64_t jj = 0; jj < nk; ++jj) {
    const float* row = m + (j0 + jj) * rs;
    for (int64_t d = 0; d < D; ++d) t[d * BK + jj] = row[d];
  }
  for (int64_t jj = nk; jj < BK; ++jj)
    for (int64_t d = 0; d < D; ++d) t[d * BK + jj] = 0.f;
}

// s[i * BK + jj] = x_i . tile column jj for the R rows x_i = x + i * xs and all BK
// columns (the padding gives zeros).
template <int R>
FINLORA_INLINE void rows_times_tile(const float* x, int64_t xs, const float* t, int64_t D, float* s) {
  v16f a[R][4] = {};
  for (int64_t d = 0; d < D; ++d) {
    const float* r = t + d * BK;
    const v16f t0 = load16(r), t1 = load16(r + 16), t2 = load16(r + 32), t3 = load16(r + 48);
    for (int i = 0; i < R; ++i) {
      const float xd = x[i * xs + d];
      a[i][0] += xd * t0;
      a[i][1] += xd * t1;
      a[i][2] += xd * t2;
      a[i][3] += xd * t3;
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < 4; ++c) store16(s + i * BK + 16 * c, a[i][c]);
}

// acc_i[0, D) += sum_{j < n} c[i * ci + j * cj] * m[j * ms + (0, D)] for the R rows
// acc_i = acc + i * as: one row of m feeds all R accumulator rows.
template <int R>
FINLORA_INLINE void rows_acc(float* acc, int64_t as, const float* c, int64_t ci, int64_t cj, const float* m, int64_t ms, int64_t n,
                             int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) {
    v16f a[R][4];
    for (int i = 0; i < R; ++i)
      for (int k = 0; k < 4; ++k) a[i][k] = load16(acc + i * as + d0 + 16 * k);
    for (int64_t j = 0; j < n; ++j) {
      const float* r = m + j * ms + d0;
      const v16f m0 = load16(r), m1 = load16(r + 16), m2 = load16(r + 32), m3 = load16(r + 48);
      for (int i = 0; i < R; ++i) {
        const float cv = c[i * ci + j * cj];
        a[i][0] += cv * m0;
        a[i][1] += cv * m1;
        a[i][2] += cv * m2;
        a[i][3] += cv * m3;
      }
    }
    for (int i = 0; i < R; ++i)
      for (int k = 0; k < 4; ++k) store16(acc + i * as + d0 + 16 * k, a[i][k]);
  }
  for (; d0 + 16 <= D; d0 += 16) {
    v16f a[R];
    for (int i = 0; i < R; ++i) a[i] = load16(acc + i * as + d0);
    for (int64_t j = 0; j < n; ++j) {
      const v16f mv = load16(m + j * ms + d0);
      for (int i = 0; i < R; ++i) a[i] += c[i * ci + j * cj] * mv;
    }
    for (int i = 0; i < R; ++i) store16(acc + i * as + d0, a[i]);
  }
  if (d0 == D) return;
  for (int i = 0; i < R; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float cv = c[i * ci + j * cj];
      const float* r = m + j * ms;
      for (int64_t d = d0; d < D; ++d) acc[i * as + d] += cv * r[d];
    }
}

// The two helpers above for any row count 1..RB.
FINLORA_INLINE void rows_times_tile_n(int r, const float* x, int64_t xs, const float* t, int64_t D, float* s) {
  switch (r) {
    case 4: return rows_times_tile<4>(x, xs, t, D, s);
    case 3: return rows_times_tile<3>(x, xs, t, D, s);
    case 2: return rows_times_tile<2>(x, xs, t, D, s);
    default: return rows_times_tile<1>(x, xs, t, D, s);
  }
}
FINLORA_INLINE void rows_acc_n(int r, float* acc, int64_t as, const float* c, int64_t ci, int64_t cj, const float* m, int64_t ms,
                               int64_t n, int64_t D) {
  switch (r) {
    case 4: return rows_acc<4>(acc, as, c, ci, cj, m, ms, n, D);
    case 3: return rows_acc<3>(acc, as, c, ci, cj, m, ms, n, D);
    case 2: return rows_acc<2>(acc, as, c, ci, cj, m, ms, n, D);
    default: return rows_acc<1>(acc, as, c, ci, cj, m, ms, n, D);
  }
}

// A query block with few rows (decode) would spend more on transposing the tile than
// on the products; it takes plain dot products instead.
constexpr int64_t kPackMinRows = 4;

struct Tile {
  int64_t j0, nk;
  bool packed;
  const float* rows;  // the untransposed [S, D] matrix
  int64_t rs;         // its row stride
  const float* t;     // transposed tile when packed
};

// Scores of rows x_i = x + i * xs (i < r) against the tile into s[i * BK + jj]; only
// the first nk columns are meaningful when the tile is not packed.
FINLORA_INLINE void scores(const Tile& tile, int r, const float* x, int64_t xs, int64_t D, float* s) {
  if (tile.packed) {
    rows_times_tile_n(r, x, xs, tile.t, D, s);
    return;
  }
  for (int i = 0; i < r; ++i)
    for (int64_t jj = 0; jj < tile.nk; ++jj) s[i * BK + jj] = dot(x + i * xs, tile.rows + (tile.j0 + jj) * tile.rs, D);
}

// bias[jj] = 0 for a key of the tile that the mask lets through, -inf otherwise
// (masked keys and the zero padding past nk).
FINLORA_INLINE void tile_bias(const float* mask, int64_t j0, int64_t nk, float* bias) {
  for (int64_t jj = 0; jj < BK; ++jj) bias[jj] = jj < nk && (mask == nullptr || mask[j0 + jj] != 0.f) ? 0.f : -INFINITY;
}

// s[jj] = raw[jj] * scale + bias[jj] for jj < lim, -inf beyond; returns the maximum.
FINLORA_INLINE float scaled_scores(float* s, const float* bias, float scale, int64_t lim) {
  const int64_t nv = (lim + 7) / 8;
  const v8f vs = splat8(scale), vlim = splat8(static_cast<float>(lim)), ninf = splat8(-INFINITY);
  v8f vmax = ninf;
  for (int64_t c = 0; c < nv; ++c) {
    v8f x = load8(s + 8 * c) * vs + load8(bias + 8 * c);
    x = lanes_from(8 * c) < vlim ? x : ninf;
    store8(s + 8 * c, x);
    // NOTE: NaN must win the maximum, so a NaN score makes its whole row NaN (as in
    // the reference and PyTorch) instead of being skipped like a masked key.
    vmax = (x > vmax) | (x != x) ? x : vmax;
  }
  return hmax8(vmax);
}

// ------------------------------------------------------------------ forward

template <class X>
FINLORA_INLINE void forward_task(const Params& p, int64_t task, int64_t) {
  const int64_t D = p.D;
  const auto [b, h, g, i0, i1, rows] = query_block(p, task);
  const float* Q = p.q.head(b, h);
  const float* K = p.k.head(b, g);
  const float* V = p.v.head(b, g);
  const int64_t qs = p.q.st, ks = p.k.st, vs = p.v.st;
  const float* M = p.mask ? p.mask + b * p.S : nullptr;
  float* O = p.out.head(b, h);
  float* L = p.lse + (b * p.Hq + h) * p.T;

  const bool pack = rows >= kPackMinRows;
  std::vector<float> kt(pack ? D * BK : 0), acc(rows * D, 0.f), m(rows, -INFINITY), l(rows, 0.f);
  alignas(64) float sc[RB * BK];
  float bias[BK];
  const int64_t jend = key_end(p, i1);
  for (int64_t j0 = 0; j0 < jend; j0 += BK) {
    const int64_t nk = std::min(BK, jend - j0);
    if (pack) pack_t(K, ks, j0, nk, D, kt.data());
    tile_bias(M, j0, nk, bias);
    const Tile tile{j0, nk, pack, K, ks, kt.data()};
    for (int64_t r0 = i0; r0 < i1; r0 += RB) {
      const int nr = static_cast<int>(std::min<int64_t>(RB, i1 - r0));
      scores(tile, nr, Q + r0 * qs, qs, D, sc);
      int64_t used = 0;  // keys the block's probabilities reach
      for (int i = 0; i < nr; ++i) {
        float* s = sc + i * BK;
        const int64_t lim = visible(p, r0 + i, j0, nk);
        const float rowmax = lim > 0 ? scaled_scores(s, bias, p.scale, lim) : -INFINITY;
        if (rowmax == -INFINITY) {
          std::memset(s, 0, sizeof(float) * BK);
          continue;
        }
        const int64_t r = r0 + i - i0;
        const float mnew = m[r] > rowmax ? m[r] : rowmax;
        if (m[r] != -INFINITY && m[r] != mnew) {
          const float corr = std::exp(m[r] - mnew);
          nn::scale(corr, acc.data() + r * D, D);
          l[r] *= corr;
        }
        const v8f vm = splat8(mnew);
        v8f vsum = {};
        int64_t c = 0;
        for (; c < (lim + 7) / 8; ++c) {
          const v8f e = X::exp8(load8(s + 8 * c) - vm);
          store8(s + 8 * c, e);
          vsum += e;
        }
        for (; c < BK / 8; ++c) store8(s + 8 * c, v8f{});
        l[r] += hsum8(vsum);
        m[r] = mnew;
        used = std::max(used, lim);
      }
      if (used > 0) rows_acc_n(nr, acc.data() + (r0 - i0) * D, D, sc, BK, 1, V + j0 * vs, vs, used, D);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* o = O + (i0 + r) * p.out.st;
    if (l[r] == 0.f) {
      for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
      L[i0 + r] = -INFINITY;
      continue;
    }
    const float inv = 1.f / l[r];
    const float* a = acc.data() + r * D;
    for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
    L[i0 + r] = m[r] + std::log(l[r]);
  }
}
FINLORA_ISA_VARIANTS_BY(forward, forward_task<FmaExp>, forward_task<LibmExp>, Params)

// ------------------------------------------------------------------ backward

// For one query row against a tile: p = exp(s - lse) into sc and
// ds = scale * p * (dp - D_i) into dp, zero past lim.
template <class X>
FINLORA_INLINE void row_grads(float* sc, float* dp, const float* bias, float scale, float lse, float rowdot, int64_t lim) {
  scaled_scores(sc, bias, scale, lim);
  const v8f vl = splat8(lse), vd = splat8(rowdot), vs = splat8(scale), vlim = splat8(static_cast<float>(lim)), zero = {};
  for (int64_t c = 0; c < BK / 8; ++c) {
    const v8i inside = lanes_from(8 * c) < vlim;
    // lanes past lim may hold anything (an unpacked tile leaves them unset): select, never multiply
    const v8f pj = 8 * c < lim ? X::exp8(load8(sc + 8 * c) - vl) : zero;
    const v8f ds = vs * pj * (load8(dp + 8 * c) - vd);
    store8(sc + 8 * c, inside ? pj : zero);
    store8(dp + 8 * c, inside ? ds : zero);
  }
}

// p and ds for the rows r0 + i (i < nr) against a tile, into P[i * BK] and dS[i * BK];
// rows that see none of its keys get zeros. Returns the keys any row reaches.
template <class X>
FINLORA_INLINE int64_t block_grads(const Params& p, const Tile& ktile, const Tile& vtile, const float* bias, const float* Q, int64_t qs,
                                   const float* dO, int64_t dos, const float* L, const float* Dl, int64_t r0, int nr, float* P, float* dS) {
  scores(ktile, nr, Q + r0 * qs, qs, p.D, P);
  scores(vtile, nr, dO + r0 * dos, dos, p.D, dS);
  int64_t used = 0;
  for (int i = 0; i < nr; ++i) {
    const int64_t row = r0 + i;
    const int64_t lim = visible(p, row, ktile.j0, ktile.nk);
    if (lim <= 0 || L[row] == -INFINITY) {
      std::memset(P + i * BK, 0, sizeof(float) * BK);
      std::memset(dS + i * BK, 0, sizeof(float) * BK);
      continue;
    }
    row_grads<X>(P + i * BK, dS + i * BK, bias, p.scale, L[row], Dl[row], lim);
    used = std::max(used, lim);
  }
  return used;
}

// Pass 1: D_i and dq for the rows of one (batch, query head, query block).
template <class X>
FINLORA_INLINE void dq_task(const Params& p, int64_t task, int64_t) {
  const int64_t D = p.D;
  const auto [b, h, g, i0, i1, rows] = query_block(p, task);
  const float* Q = p.q.head(b, h);
  const float* dO = p.dout.head(b, h);
  const float* O = p.out_in.head(b, h);
  const float* L = p.lse_in + (b * p.Hq + h) * p.T;
  float* Dl = p.rowdot + (b * p.Hq + h) * p.T;
  const float* K = p.k.head(b, g);
  const float* V = p.v.head(b, g);
  const int64_t qs = p.q.st, dos = p.dout.st, ks = p.k.st, vs = p.v.st;
  const float* M = p.mask ? p.mask + b * p.S : nullptr;
  float* dQ = p.dq.head(b, h);

  for (int64_t i = i0; i < i1; ++i) Dl[i] = dot(dO + i * dos, O + i * p.out_in.st, D);
  const bool pack = rows >= kPackMinRows;
  std::vector<float> kt(pack ? D * BK : 0), vt(pack ? D * BK : 0), acc(rows * D, 0.f);
  alignas(64) float P[RB * BK], dS[RB * BK];
  float bias[BK];
  const int64_t jend = key_end(p, i1);
  for (int64_t j0 = 0; j0 < jend; j0 += BK) {
    const int64_t nk = std::min(BK, jend - j0);
    if (pack) {
      pack_t(K, ks, j0, nk, D, kt.data());
      pack_t(V, vs, j0, nk, D, vt.data());
    }
    tile_bias(M, j0, nk, bias);
    const Tile ktile{j0, nk, pack, K, ks, kt.data()}, vtile{j0, nk, pack, V, vs, vt.data()};
    for (int64_t r0 = i0; r0 < i1; r0 += RB) {
      const int nr = static_cast<int>(std::min<int64_t>(RB, i1 - r0));
      const int64_t used = block_grads<X>(p, ktile, vtile, bias, Q, qs, dO, dos, L, Dl, r0, nr, P, dS);
      if (used > 0) rows_acc_n(nr, acc.data() + (r0 - i0) * D, D, dS, BK, 1, K + j0 * ks, ks, used, D);
    }
  }
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dQ + (i0 + r) * p.dq.st, acc.data() + r * D, sizeof(float) * D);
}
FINLORA_ISA_VARIANTS_BY(dq, dq_task<FmaExp>, dq_task<LibmExp>, Params)

// Query rows whose probabilities and score gradients pass 2 holds at once.
constexpr int64_t kRowBlock = 32;

// Pass 2: dk and dv for the keys of one (batch, kv head, key block), summed over every
// query row of every query head that reads this kv head. Rows go in blocks: their p and
// ds against the tile are stored, then blocks of key rows take all of them at once
// (dv += pᵀ dout, dk += dsᵀ q).
template <class X>
FINLORA_INLINE void dkv_task(const Params& p, int64_t task, int64_t) {
  const int64_t D = p.D;
  const int64_t kb = task % p.nkb, g = (task / p.nkb) % p.Hkv, b = task / (p.nkb * p.Hkv);
  const int64_t j0 = kb * BK, nk = std::min(BK, p.S - j0);
  const float* K = p.k.head(b, g);
  const float* V = p.v.head(b, g);
  const int64_t ks = p.k.st, vs = p.v.st, qs = p.q.st, dos = p.dout.st;
  const float* M = p.mask ? p.mask + b * p.S : nullptr;
  const int64_t rep = p.Hq / p.Hkv;
  // causal: row i sees key j0 when i >= j0 - (S - T)
  const int64_t ifirst = p.causal ? std::max<int64_t>(0, j0 - (p.S - p.T)) : 0;
  const bool pack = (p.T - ifirst) * rep >= kPackMinRows;
  std::vector<float> kt(pack ? D * BK : 0), vt(pack ? D * BK : 0), dk(nk * D, 0.f), dv(nk * D, 0.f);
  std::vector<float> P(kRowBlock * BK), dS(kRowBlock * BK);
  if (pack) {
    pack_t(K, ks, j0, nk, D, kt.data());
    pack_t(V, vs, j0, nk, D, vt.data());
  }
  float bias[BK];
  tile_bias(M, j0, nk, bias);
  const Tile ktile{j0, nk, pack, K, ks, kt.data()}, vtile{j0, nk, pack, V, vs, vt.data()};
  for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
    const float* Q = p.q.head(b, h);
    const float* dO = p.dout.head(b, h);
    const float* L = p.lse_in + (b * p.Hq + h) * p.T;
    const float* Dl = p.rowdot + (b * p.Hq + h) * p.T;
    for (int64_t r0 = ifirst; r0 < p.T; r0 += kRowBlock) {
      const int64_t nr = std::min(kRowBlock, p.T - r0);
      int64_t used = 0;
      for (int64_t rb = 0; rb < nr; rb += RB) {
        const int n = static_cast<int>(std::min<int64_t>(RB, nr - rb));
        used = std::max(used, block_grads<X>(p, ktile, vtile, bias, Q, qs, dO, dos, L, Dl, r0 + rb, n, P.data() + rb * BK, dS.data() + rb * BK));
      }
      if (used == 0) continue;
      // key rows jj take coefficient (row r) P[r * BK + jj]: ci = 1 walks keys, cj = BK walks rows
      for (int64_t jj = 0; jj < used; jj += RB) {
        const int n = static_cast<int>(std::min<int64_t>(RB, used - jj));
        rows_acc_n(n, dv.data() + jj * D, D, P.data() + jj, 1, BK, dO + r0 * dos, dos, nr, D);
        rows_acc_n(n, dk.data() + jj * D, D, dS.data() + jj, 1, BK, Q + r0 * qs, qs, nr, D);
      }
    }
  }
  float* dK = p.dk.head(b, g);
  float* dV = p.dv.head(b, g);
  for (int64_t jj = 0; jj < nk; ++jj) {
    std::memcpy(dK + (j0 + jj) * p.dk.st, dk.data() + jj * D, sizeof(float) * D);
    std::memcpy(dV + (j0 + jj) * p.dv.st, dv.data() + jj * D, sizeof(float) * D);
  }
}
FINLORA_ISA_VARIANTS_BY(dkv, dkv_task<FmaExp>, dkv_task<LibmExp>, Params)

// Reads the (batch, head, row) strides of the next operand from ints[at].
View view_at(const KernelArgs& a, int ptr, int64_t at) {
  return {static_cast<const float*>(a.ptrs[ptr]), a.ints[at], a.ints[at + 1], a.ints[at + 2]};
}
OutView out_view_at(const KernelArgs& a, int ptr, int64_t at) {
  return {static_cast<float*>(a.ptrs[ptr]), a.ints[at], a.ints[at + 1], a.ints[at + 2]};
}

Params read_params(const KernelArgs& a) {
  Params p{};
  p.B = a.ints[0];
  p.Hq = a.ints[1];
  p.Hkv = a.ints[2];
  p.T = a.ints[3];
  p.S = a.ints[4];
  p.D = a.ints[5];
  p.causal = a.ints[6] != 0;
  p.scale = static_cast<float>(a.floats[0]);
  p.q = view_at(a, 0, 8);
  p.k = view_at(a, 1, 11);
  p.v = view_at(a, 2, 14);
  p.mask = a.ints[7] != 0 ? static_cast<const float*>(a.ptrs[3]) : nullptr;
  // Blocks of up to 64 query rows, smaller when that leaves threads idle.
  p.bq = 64;
  const int64_t want = 4 * static_cast<int64_t>(num_threads());
  while (p.bq > 8 && p.B * p.Hq * ((p.T + p.bq - 1) / p.bq) < want) p.bq /= 2;
  p.nqb = (p.T + p.bq - 1) / p.bq;
  p.nkb = (p.S + BK - 1) / BK;
  return p;
}

bool check(const KernelArgs& a, const Params& p) {
  if (p.Hkv <= 0 || p.Hq % p.Hkv != 0) {
    a.error = "query heads (" + std::to_string(p.Hq) + ") must be a multiple of kv heads (" + std::to_string(p.Hkv) + ")";
    return false;
  }
  return true;
}

void attention_kernel(const KernelArgs& a) {
  Params p = read_params(a);
  if (!check(a, p)) return;
  p.out = out_view_at(a, 4, 17);
  p.lse = static_cast<float*>(a.ptrs[5]);
  parallel_tasks(p.B * p.Hq * p.nqb, p, forward_pick());
}

void attention_backward_kernel(const KernelArgs& a) {
  Params p = read_params(a);
  if (!check(a, p)) return;
  p.out_in = view_at(a, 4, 17);
  p.lse_in = static_cast<const float*>(a.ptrs[5]);
  p.dout = view_at(a, 6, 20);
  p.dq = out_view_at(a, 7, 23);
  p.dk = out_view_at(a, 8, 26);
  p.dv = out_view_at(a, 9, 29);
  std::vector<float> rowdot(p.B * p.Hq * p.T);
  p.rowdot = rowdot.data();
  parallel_tasks(p.B * p.Hq * p.nqb, p, dq_pick());
  parallel_tasks(p.B * p.Hkv * p.nkb, p, dkv_pick());
}

}  // namespace

FINLORA_KERNEL("attention", attention_kernel)
FINLORA_KERNEL("attentionBackward", attention_backward_kernel)

}  // namespace finlora
