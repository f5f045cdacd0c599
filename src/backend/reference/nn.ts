// Reference kernels for the neural-network ops: embedding, RMSNorm, rotary embedding,
// attention, cross-entropy, dropout, DoRA's output scaling. Plain f64 loops that follow
// the definitions (Hugging Face Llama, PyTorch) with no tiling or fusion; attention
// materialises the full T x S score matrix on purpose. Used only by tests.
import type { Kernels } from '../kernels.js';
import type { Tensor } from '../../tensor/tensor.js';
import { dropoutUniform } from '../../ops/dropout.js';
import { read, write } from './reference.js';

function checkIds(ids: Float64Array, V: number): void {
  ids.forEach((id, i) => {
    if (!(id >= 0 && id < V)) throw new Error(`gather: embedding id ${id} at position ${i} is out of range for a table of ${V} rows`);
  });
}

function checkTargets(op: string, targets: Float64Array, V: number, ignoreIndex: number): void {
  targets.forEach((t, i) => {
    if (t !== ignoreIndex && !(t >= 0 && t < V)) {
      throw new Error(`${op}: target ${t} at row ${i} is out of range for ${V} classes (ignore_index ${ignoreIndex})`);
    }
  });
}

/** Attention's sizes: batch, query and key/value heads, query and key positions, head dim. */
export interface AttentionDims {
  B: number;
  Hq: number;
  Hkv: number;
  T: number;
  S: number;
  D: number;
}

function attentionDims(q: Tensor, k: Tensor): AttentionDims {
  const [B, Hq, T, D] = q.shape;
  const [, Hkv, S] = k.shape;
  return { B, Hq, Hkv, T, S, D };
}

/**
 * Softmax probabilities of one query row over all S keys (0 where masked), and the
 * row's log-sum-exp (-Infinity when every key is masked).
 */
function attentionRow(
  q: Float64Array, k: Float64Array, mask: Float64Array | null,
  dims: AttentionDims, b: number, h: number, t: number, scale: number, causal: boolean,
): { p: Float64Array; lse: number } {
  const { Hq, Hkv, T, S, D } = dims;
  const g = Math.floor(h / (Hq / Hkv));
  const qo = ((b * Hq + h) * T + t) * D;
  const scores = new Float64Array(S).fill(-Infinity);
  for (let s = 0; s < S; s++) {
    if (causal && s > t + (S - T)) continue;
    if (mask !== null && mask[b * S + s] === 0) continue;
    const ko = ((b * Hkv + g) * S + s) * D;
    let dot = 0;
    for (let d = 0; d < D; d++) dot += q[qo + d] * k[ko + d];
    scores[s] = scale * dot;
  }
  let max = -Infinity;
  for (const x of scores) max = Math.max(max, x);
  const p = new Float64Array(S);
  if (max === -Infinity) return { p, lse: -Infinity };
  let sum = 0;
  for (let s = 0; s < S; s++) sum += Math.exp(scores[s] - max);
  for (let s = 0; s < S; s++) p[s] = Math.exp(scores[s] - max) / sum;
  return { p, lse: max + Math.log(sum) };
}

/** ‖W_i + s·(B·A)_i‖ per row in f64, W [rows, cols], A [r, cols], B [rows, r] row-major. */
export function doraRowNorms(wv: ArrayLike<number>, av: ArrayLike<number>, bv: ArrayLike<number>, rows: number, cols: number, r: number, s: number): Float64Array {
  const norms = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    let sq = 0;
    for (let c = 0; c < cols; c++) {
      let ba = 0;
      for (let k = 0; k < r; k++) ba += bv[i * r + k] * av[k * cols + c];
      const v = wv[i * cols + c] + s * ba;
      sq += v * v;
    }
    norms[i] = Math.sqrt(sq);
  }
  return norms;
}

export function nnKernels(): Partial<Kernels> {
  return {
    gather: (table, ids, out) => {
      const [V, D] = table.shape;
      const vt = read(table), vi = read(ids);
      checkIds(vi, V);
      const r = new Float64Array(vi.length * D);
      vi.forEach((id, i) => r.set(vt.subarray(id * D, id * D + D), i * D));
      write(out, r);
    },

    scatterAdd: (src, ids, out) => {
      const [V, D] = out.shape;
      const vs = read(src), vi = read(ids), r = read(out);
      checkIds(vi, V);
      vi.forEach((id, i) => {
        for (let d = 0; d < D; d++) r[id * D + d] += vs[i * D + d];
      });
      write(out, r);
    },

    rmsnorm: (x, weight, out, rstd, eps) => {
      const D = x.shape[x.rank - 1], N = x.size / D;
      const vx = read(x), vw = read(weight);
      const r = new Float64Array(N * D), rs = new Float64Array(N);
      for (let n = 0; n < N; n++) {
        let ss = 0;
        for (let d = 0; d < D; d++) ss += vx[n * D + d] ** 2;
        rs[n] = 1 / Math.sqrt(ss / D + eps);
        for (let d = 0; d < D; d++) r[n * D + d] = vx[n * D + d] * rs[n] * vw[d];
      }
      write(out, r);
      write(rstd, rs);
    },

    rmsnormBackward: (x, weight, rstd, dy, dx, dweight) => {
      // y = x * r * w with r = (mean(x^2) + eps)^(-1/2), so dr/dx_k = -r^3 x_k / D.
      const D = x.shape[x.rank - 1], N = x.size / D;
      const vx = read(x), vw = read(weight), vr = read(rstd), vdy = read(dy);
      const dw = new Float64Array(D);
      const r = new Float64Array(N * D);
      for (let n = 0; n < N; n++) {
        const rs = vr[n];
        let dot = 0;
        for (let d = 0; d < D; d++) dot += vdy[n * D + d] * vw[d] * vx[n * D + d];
        for (let d = 0; d < D; d++) {
          const i = n * D + d;
          r[i] = rs * vw[d] * vdy[i] - (rs ** 3 / D) * vx[i] * dot;
          dw[d] += vdy[i] * vx[i] * rs;
        }
      }
      write(dx, r);
      write(dweight, dw);
    },

    rope: (x, cos, sin, out, inverse) => {
      const [B, T, H, D] = x.shape;
      const half = D / 2;
      const vx = read(x), vc = read(cos), vs = read(sin);
      const sign = inverse ? -1 : 1;
      const r = new Float64Array(vx.length);
      for (let b = 0; b < B; b++) {
        const cb = cos.shape[0] === 1 ? 0 : b;
        for (let t = 0; t < T; t++) {
          for (let h = 0; h < H; h++) {
            const o = ((b * T + t) * H + h) * D;
            for (let i = 0; i < half; i++) {
              const c = vc[(cb * T + t) * half + i], s = sign * vs[(cb * T + t) * half + i];
              const x1 = vx[o + i], x2 = vx[o + i + half];
              r[o + i] = x1 * c - x2 * s;
              r[o + i + half] = x2 * c + x1 * s;
            }
          }
        }
      }
      write(out, r);
    },

    attention: (q, k, v, keyMask, out, lse, { scale, causal }) => {
      const dims = attentionDims(q, k);
      const { B, Hq, Hkv, T, S, D } = dims;
      const vq = read(q), vk = read(k), vv = read(v), mask = keyMask ? read(keyMask) : null;
      const o = new Float64Array(B * Hq * T * D), l = new Float64Array(B * Hq * T);
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < Hq; h++) {
          const g = Math.floor(h / (Hq / Hkv));
          for (let t = 0; t < T; t++) {
            const row = attentionRow(vq, vk, mask, dims, b, h, t, scale, causal);
            const ro = (b * Hq + h) * T + t;
            l[ro] = row.lse;
            for (let s = 0; s < S; s++) {
              if (row.p[s] === 0) continue;
              const vo = ((b * Hkv + g) * S + s) * D;
              for (let d = 0; d < D; d++) o[ro * D + d] += row.p[s] * vv[vo + d];
            }
          }
        }
      }
      write(out, o);
      write(lse, l);
    },

    // Recomputes the probabilities from q and k rather than using the saved out/lse,
    // so it checks a backend's use of them.
    attentionBackward: (q, k, v, keyMask, _out, _lse, dout, dq, dk, dv, { scale, causal }) => {
      const dims = attentionDims(q, k);
      const { B, Hq, Hkv, T, S, D } = dims;
      const vq = read(q), vk = read(k), vv = read(v), vdo = read(dout), mask = keyMask ? read(keyMask) : null;
      const gq = new Float64Array(vq.length), gk = new Float64Array(vk.length), gv = new Float64Array(vv.length);
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < Hq; h++) {
          const g = Math.floor(h / (Hq / Hkv));
          for (let t = 0; t < T; t++) {
            const { p } = attentionRow(vq, vk, mask, dims, b, h, t, scale, causal);
            const ro = ((b * Hq + h) * T + t) * D;
            const dp = new Float64Array(S);
            let pdp = 0;
            for (let s = 0; s < S; s++) {
              const vo = ((b * Hkv + g) * S + s) * D;
              for (let d = 0; d < D; d++) dp[s] += vdo[ro + d] * vv[vo + d];
              pdp += p[s] * dp[s];
            }
            for (let s = 0; s < S; s++) {
              const ds = p[s] * (dp[s] - pdp);
              const ko = ((b * Hkv + g) * S + s) * D;
              for (let d = 0; d < D; d++) {
                gq[ro + d] += scale * ds * vk[ko + d];
                gk[ko + d] += scale * ds * vq[ro + d];
                gv[ko + d] += p[s] * vdo[ro + d];
              }
            }
          }
        }
      }
      write(dq, gq);
      write(dk, gk);
      write(dv, gv);
    },

    crossEntropy: (logits, targets, loss, lse, ignoreIndex) => {
      const [N, V] = logits.shape;
      const vl = read(logits), vt = read(targets);
      checkTargets('crossEntropy', vt, V, ignoreIndex);
      const rl = new Float64Array(N), rs = new Float64Array(N);
      for (let n = 0; n < N; n++) {
        let max = -Infinity;
        for (let c = 0; c < V; c++) max = Math.max(max, vl[n * V + c]);
        let sum = 0;
        for (let c = 0; c < V; c++) sum += Math.exp(vl[n * V + c] - max);
        rs[n] = max + Math.log(sum);
        rl[n] = vt[n] === ignoreIndex ? 0 : rs[n] - vl[n * V + vt[n]];
      }
      write(loss, rl);
      write(lse, rs);
    },

    crossEntropyBackward: (logits, targets, lse, dloss, dlogits, ignoreIndex) => {
      const [N, V] = logits.shape;
      const vl = read(logits), vt = read(targets), vs = read(lse), vd = read(dloss);
      checkTargets('crossEntropyBackward', vt, V, ignoreIndex);
      const r = new Float64Array(N * V);
      for (let n = 0; n < N; n++) {
        if (vt[n] === ignoreIndex) continue;
        for (let c = 0; c < V; c++) r[n * V + c] = vd[n] * (Math.exp(vl[n * V + c] - vs[n]) - (c === vt[n] ? 1 : 0));
      }
      write(dlogits, r);
    },

    dropoutMask: (out, p, seed, offset) => {
      const r = new Float64Array(out.size);
      for (let i = 0; i < r.length; i++) r[i] = dropoutUniform(seed, offset + i) >= p ? 1 / (1 - p) : 0;
      write(out, r);
    },
    doraScale: (base, lora, g, out, s) => {
      const b = read(base), l = read(lora), gv = read(g);
      write(out, b.map((bi, i) => (bi + s * l[i]) * gv[i % gv.length]));
    },
    doraScaleBackward: (base, lora, g, dout, dbase, dlora, dg, s) => {
      const b = read(base), l = read(lora), gv = read(g), d = read(dout);
      const cols = gv.length;
      const sums = new Float64Array(cols);
      d.forEach((di, i) => (sums[i % cols] += di * (b[i] + s * l[i])));
      const db = d.map((di, i) => di * gv[i % cols]);
      write(dbase, db);
      write(dlora, db.map((x) => s * x));
      write(dg, sums);
    },
    doraNorm: (w, a, b, out, s) => write(out, doraRowNorms(read(w), read(a), read(b), w.shape[0], w.shape[1], a.shape[0], s)),
    dropout: (x, out, p, seed, offset) => {
      const v = read(x);
      write(out, v.map((xi, i) => xi * (dropoutUniform(seed, offset + i) >= p ? 1 / (1 - p) : 0)));
    },
  };
}
