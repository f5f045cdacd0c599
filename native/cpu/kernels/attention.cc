// attention: scaled dot-product attention with grouped-query heads, computed
// flash-style (Dao et al. 2022, FlashAttention; Dao 2023, FlashAttention-2): keys are
// visited in tiles with an online softmax, so no T x S score matrix is ever stored;
// only the per-row log-sum-exp is saved for backward. All arithmetic is f32.
//
// attention ints: [B, Hq, Hkv, T, S, D, causal, has_mask]; floats: [scale]
//   ptrs: [q [B, Hq, T, D], k, v [B, Hkv, S, D], key_mask f32 [B, S] (ignored unless
//   has_mask), out [B, Hq, T, D] (=), lse [B, Hq, T] (=)]
// attentionBackward ints, floats: the same
//   ptrs: [q, k, v, key_mask, out, lse, dout, dq (=), dk (=), dv (=)]
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
#include <algorithm>
#include <cmath>
#include <vector>

#include "nn_simd.h"

namespace finlora {
namespace {

using namespace nn;

constexpr int64_t BK = 64;  // keys per tile: a transposed K tile is D x 64 floats

struct Params {
  const float* q;
  const float* k;
  const float* v;
  const float* mask;
  const float* out_in;  // forward output (backward)
  const float* lse_in;
  const float* dout;
  float* out;
  float* lse;
  float* dq;
  float* dk;
  float* dv;
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

// Transposes rows [j0, j0 + nk) of a [S, D] matrix into t[d * BK + jj], zero-padding
// the tile to BK columns, so that a row's scores against the tile are 8-lane FMAs with
// no horizontal sums.
FINLORA_INLINE void pack_t(const float* m, int64_t j0, int64_t nk, int64_t D, float* t) {
  for (int64_t jj = 0; jj < nk; ++jj) {
    const float* row = m + (j0 + jj) * D;
    for (int64_t d = 0; d < D; ++d) t[d * BK + jj] = row[d];
  }
  for (int64_t jj = nk; jj < BK; ++jj)
    for (int64_t d = 0; d < D; ++d) t[d * BK + jj] = 0.f;
}

// s[jj] = x . tile column jj, for the first ceil(nk / 8) * 8 columns.
FINLORA_INLINE void row_times_tile(const float* x, const float* t, int64_t D, int64_t nk, float* s) {
  if (nk > 32) {
    v8f a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
    for (int64_t d = 0; d < D; ++d) {
      const v8f xd = splat8(x[d]);
      const float* r = t + d * BK;
      a0 += xd * load8(r);
      a1 += xd * load8(r + 8);
      a2 += xd * load8(r + 16);
      a3 += xd * load8(r + 24);
      a4 += xd * load8(r + 32);
      a5 += xd * load8(r + 40);
      a6 += xd * load8(r + 48);
      a7 += xd * load8(r + 56);
    }
    store8(s, a0);
    store8(s + 8, a1);
    store8(s + 16, a2);
    store8(s + 24, a3);
    store8(s + 32, a4);
    store8(s + 40, a5);
    store8(s + 48, a6);
    store8(s + 56, a7);
    return;
  }
  const int64_t nv = (nk + 7) / 8;
  v8f a[4] = {};
  for (int64_t d = 0; d < D; ++d) {
    const v8f xd = splat8(x[d]);
    const float* r = t + d * BK;
    for (int64_t c = 0; c < nv; ++c) a[c] += xd * load8(r + 8 * c);
  }
  for (int64_t c = 0; c < nv; ++c) store8(s + 8 * c, a[c]);
}

// A query block with few rows (decode) would spend more on transposing the tile than
// on the products; it takes plain dot products instead.
constexpr int64_t kPackMinRows = 4;

struct Tile {
  int64_t j0, nk;
  bool packed;
  const float* rows;  // the untransposed [S, D] matrix
  const float* t;     // transposed tile when packed
};

FINLORA_INLINE void scores(const Tile& tile, const float* x, int64_t D, float* s) {
  if (tile.packed) {
    row_times_tile(x, tile.t, D, tile.nk, s);
  } else {
    for (int64_t jj = 0; jj < tile.nk; ++jj) s[jj] = dot(x, tile.rows + (tile.j0 + jj) * D, D);
  }
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
    vmax = x > vmax ? x : vmax;
  }
  return hmax8(vmax);
}

// ------------------------------------------------------------------ forward

FINLORA_INLINE void forward_task(const Params& p, int64_t task, int64_t) {
  const int64_t D = p.D;
  const int64_t qb = task % p.nqb, h = (task / p.nqb) % p.Hq, b = task / (p.nqb * p.Hq);
  const int64_t g = h / (p.Hq / p.Hkv);
  const int64_t i0 = qb * p.bq, i1 = std::min(p.T, i0 + p.bq), rows = i1 - i0;
  const float* Q = p.q + (b * p.Hq + h) * p.T * D;
  const float* K = p.k + (b * p.Hkv + g) * p.S * D;
  const float* V = p.v + (b * p.Hkv + g) * p.S * D;
  const float* M = p.mask ? p.mask + b * p.S : nullptr;
  float* O = p.out + (b * p.Hq + h) * p.T * D;
  float* L = p.lse + (b * p.Hq + h) * p.T;

  const bool pack = rows >= kPackMinRows;
  std::vector<float> kt(pack ? D * BK : 0), acc(rows * D, 0.f), m(rows, -INFINITY), l(rows, 0.f);
  float sc[BK], bias[BK];
  const int64_t jend = key_end(p, i1);
  for (int64_t j0 = 0; j0 < jend; j0 += BK) {
    const int64_t nk = std::min(BK, jend - j0);
    if (pack) pack_t(K, j0, nk, D, kt.data());
    tile_bias(M, j0, nk, bias);
    const Tile tile{j0, nk, pack, K, kt.data()};
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t lim = visible(p, i, j0, nk);
      if (lim <= 0) continue;
      scores(tile, Q + i * D, D, sc);
      const float rowmax = scaled_scores(sc, bias, p.scale, lim);
      if (rowmax == -INFINITY) continue;
      const int64_t r = i - i0;
      const float mnew = m[r] > rowmax ? m[r] : rowmax;
      float* a = acc.data() + r * D;
      if (m[r] != -INFINITY && m[r] != mnew) {
        const float corr = std::exp(m[r] - mnew);
        scale(corr, a, D);
        l[r] *= corr;
      }
      const v8f vm = splat8(mnew);
      v8f vsum = {};
      for (int64_t c = 0; c < (lim + 7) / 8; ++c) {
        const v8f e = exp8(load8(sc + 8 * c) - vm);
        store8(sc + 8 * c, e);
        vsum += e;
      }
      gemv_acc(a, sc, 1, V + j0 * D, D, lim, D);
      l[r] += hsum8(vsum);
      m[r] = mnew;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* o = O + (i0 + r) * D;
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
FINLORA_ISA_VARIANTS(forward, forward_task, Params)

// ------------------------------------------------------------------ backward

// For one query row against a tile: p = exp(s - lse) into sc and
// ds = scale * p * (dp - D_i) into dp, zero past lim.
FINLORA_INLINE void row_grads(float* sc, float* dp, const float* bias, float scale, float lse, float rowdot, int64_t lim) {
  scaled_scores(sc, bias, scale, lim);
  const v8f vl = splat8(lse), vd = splat8(rowdot), vs = splat8(scale), vlim = splat8(static_cast<float>(lim)), zero = {};
  for (int64_t c = 0; c < BK / 8; ++c) {
    const v8i inside = lanes_from(8 * c) < vlim;
    // lanes past lim may hold anything (an unpacked tile leaves them unset): select, never multiply
    const v8f pj = 8 * c < lim ? exp8(load8(sc + 8 * c) - vl) : zero;
    const v8f ds = vs * pj * (load8(dp + 8 * c) - vd);
    store8(sc + 8 * c, inside ? pj : zero);
    store8(dp + 8 * c, inside ? ds : zero);
  }
}

// Pass 1: D_i and dq for the rows of one (batch, query head, query block).
FINLORA_INLINE void dq_task(const Params& p, int64_t task, int64_t) {
  const int64_t D = p.D;
  const int64_t qb = task % p.nqb, h = (task / p.nqb) % p.Hq, b = task / (p.nqb * p.Hq);
  const int64_t g = h / (p.Hq / p.Hkv);
  const int64_t i0 = qb * p.bq, i1 = std::min(p.T, i0 + p.bq), rows = i1 - i0;
  const int64_t head = (b * p.Hq + h) * p.T;
  const float* Q = p.q + head * D;
  const float* dO = p.dout + head * D;
  const float* O = p.out_in + head * D;
  const float* L = p.lse_in + head;
  float* Dl = p.rowdot + head;
  const float* K = p.k + (b * p.Hkv + g) * p.S * D;
  const float* V = p.v + (b * p.Hkv + g) * p.S * D;
  const float* M = p.mask ? p.mask + b * p.S : nullptr;
  float* dQ = p.dq + head * D;

  for (int64_t i = i0; i < i1; ++i) Dl[i] = dot(dO + i * D, O + i * D, D);
  const bool pack = rows >= kPackMinRows;
  std::vector<float> kt(pack ? D * BK : 0), vt(pack ? D * BK : 0), acc(rows * D, 0.f);
  float sc[BK], dp[BK], bias[BK];
  const int64_t jend = key_end(p, i1);
  for (int64_t j0 = 0; j0 < jend; j0 += BK) {
    const int64_t nk = std::min(BK, jend - j0);
    if (pack) {
      pack_t(K, j0, nk, D, kt.data());
      pack_t(V, j0, nk, D, vt.data());
    }
    tile_bias(M, j0, nk, bias);
    const Tile ktile{j0, nk, pack, K, kt.data()}, vtile{j0, nk, pack, V, vt.data()};
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t lim = visible(p, i, j0, nk);
      if (lim <= 0 || L[i] == -INFINITY) continue;
      scores(ktile, Q + i * D, D, sc);
      scores(vtile, dO + i * D, D, dp);
      row_grads(sc, dp, bias, p.scale, L[i], Dl[i], lim);
      gemv_acc(acc.data() + (i - i0) * D, dp, 1, K + j0 * D, D, lim, D);
    }
  }
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dQ + (i0 + r) * D, acc.data() + r * D, sizeof(float) * D);
}
FINLORA_ISA_VARIANTS(dq, dq_task, Params)

// Query rows whose probabilities and score gradients pass 2 holds at once.
constexpr int64_t kRowBlock = 32;

// Pass 2: dk and dv for the keys of one (batch, kv head, key block), summed over every
// query row of every query head that reads this kv head. Rows go in blocks: their p and
// ds against the tile are stored, then each key's dv and dk row takes all of them in
// one register-resident product.
FINLORA_INLINE void dkv_task(const Params& p, int64_t task, int64_t) {
  const int64_t D = p.D;
  const int64_t kb = task % p.nkb, g = (task / p.nkb) % p.Hkv, b = task / (p.nkb * p.Hkv);
  const int64_t j0 = kb * BK, nk = std::min(BK, p.S - j0);
  const int64_t kvhead = (b * p.Hkv + g) * p.S;
  const float* K = p.k + kvhead * D;
  const float* V = p.v + kvhead * D;
  const float* M = p.mask ? p.mask + b * p.S : nullptr;
  const int64_t rep = p.Hq / p.Hkv;
  // causal: row i sees key j0 when i >= j0 - (S - T)
  const int64_t ifirst = p.causal ? std::max<int64_t>(0, j0 - (p.S - p.T)) : 0;
  const bool pack = (p.T - ifirst) * rep >= kPackMinRows;
  std::vector<float> kt(pack ? D * BK : 0), vt(pack ? D * BK : 0), dk(nk * D, 0.f), dv(nk * D, 0.f);
  std::vector<float> P(kRowBlock * BK), dS(kRowBlock * BK);
  if (pack) {
    pack_t(K, j0, nk, D, kt.data());
    pack_t(V, j0, nk, D, vt.data());
  }
  float bias[BK];
  tile_bias(M, j0, nk, bias);
  const Tile ktile{j0, nk, pack, K, kt.data()}, vtile{j0, nk, pack, V, vt.data()};
  for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
    const int64_t head = (b * p.Hq + h) * p.T;
    const float* Q = p.q + head * D;
    const float* dO = p.dout + head * D;
    const float* L = p.lse_in + head;
    const float* Dl = p.rowdot + head;
    for (int64_t r0 = ifirst; r0 < p.T; r0 += kRowBlock) {
      const int64_t nr = std::min(kRowBlock, p.T - r0);
      bool any = false;
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        float* pr = P.data() + r * BK;
        float* dsr = dS.data() + r * BK;
        const int64_t lim = visible(p, i, j0, nk);
        if (lim <= 0 || L[i] == -INFINITY) {
          std::memset(pr, 0, sizeof(float) * BK);
          std::memset(dsr, 0, sizeof(float) * BK);
          continue;
        }
        scores(ktile, Q + i * D, D, pr);
        scores(vtile, dO + i * D, D, dsr);
        row_grads(pr, dsr, bias, p.scale, L[i], Dl[i], lim);
        any = true;
      }
      if (!any) continue;
      for (int64_t jj = 0; jj < nk; ++jj) {
        gemv_acc(dv.data() + jj * D, P.data() + jj, BK, dO + r0 * D, D, nr, D);
        gemv_acc(dk.data() + jj * D, dS.data() + jj, BK, Q + r0 * D, D, nr, D);
      }
    }
  }
  std::memcpy(p.dk + (kvhead + j0) * D, dk.data(), sizeof(float) * nk * D);
  std::memcpy(p.dv + (kvhead + j0) * D, dv.data(), sizeof(float) * nk * D);
}
FINLORA_ISA_VARIANTS(dkv, dkv_task, Params)

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
  p.q = static_cast<const float*>(a.ptrs[0]);
  p.k = static_cast<const float*>(a.ptrs[1]);
  p.v = static_cast<const float*>(a.ptrs[2]);
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
  p.out = static_cast<float*>(a.ptrs[4]);
  p.lse = static_cast<float*>(a.ptrs[5]);
  parallel_tasks(p.B * p.Hq * p.nqb, p, forward_pick());
}

void attention_backward_kernel(const KernelArgs& a) {
  Params p = read_params(a);
  if (!check(a, p)) return;
  p.out_in = static_cast<const float*>(a.ptrs[4]);
  p.lse_in = static_cast<const float*>(a.ptrs[5]);
  p.dout = static_cast<const float*>(a.ptrs[6]);
  p.dq = static_cast<float*>(a.ptrs[7]);
  p.dk = static_cast<float*>(a.ptrs[8]);
  p.dv = static_cast<float*>(a.ptrs[9]);
  std::vector<float> rowdot(p.B * p.Hq * p.T);
  p.rowdot = rowdot.data();
  parallel_tasks(p.B * p.Hq * p.nqb, p, dq_pick());
  parallel_tasks(p.B * p.Hkv * p.nkb, p, dkv_pick());
}

}  // namespace

FINLORA_KERNEL("attention", attention_kernel)
FINLORA_KERNEL("attentionBackward", attention_backward_kernel)

}  // namespace finlora
