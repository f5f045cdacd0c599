// Reference kernels for data movement, elementwise maths, reductions and softmax.
import type { BinaryOp, Kernels, UnaryOp } from '../kernels.js';
import { read, write } from './reference.js';

/** Each unary op in f64: the exact values kernels are measured against (in ulps, by the unary tests). */
export const unaryFns: Record<UnaryOp, (x: number) => number> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  silu: (x) => x / (1 + Math.exp(-x)),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  abs: Math.abs,
  square: (x) => x * x,
};

const binaryFns: Record<BinaryOp, (x: number, y: number) => number> = {
  add: (x, y) => x + y,
  sub: (x, y) => x - y,
  mul: (x, y) => x * y,
  div: (x, y) => x / y,
  maximum: (x, y) => (x > y || Number.isNaN(x) ? x : y),
  eq: (x, y) => (x === y ? 1 : 0),
};

export function elementwiseKernels(): Partial<Kernels> {
  return {
    copy: (x, out) => write(out, read(x)),
    fill: (out, value) => write(out, new Float64Array(out.size).fill(value)),
    binary: (op, a, b, out) => {
      const va = read(a), vb = read(b), f = binaryFns[op];
      write(out, va.map((x, i) => f(x, vb[i])));
    },
    unary: (op, x, out) => write(out, read(x).map(unaryFns[op])),
    reduce: (op, x, out, { outer, n, inner }) => {
      const v = read(x);
      const r = new Float64Array(outer * inner);
      for (let o = 0; o < outer; o++) {
        for (let j = 0; j < inner; j++) {
          let acc = op === 'sum' ? 0 : -Infinity;
          for (let i = 0; i < n; i++) {
            const e = v[(o * n + i) * inner + j];
            acc = op === 'sum' ? acc + e : e > acc || Number.isNaN(e) ? e : acc;
          }
          r[o * inner + j] = acc;
        }
      }
      write(out, r);
    },
    siluMul: (gate, up, out) => {
      const g = read(gate), u = read(up);
      write(out, g.map((x, i) => unaryFns.silu(x) * u[i]));
    },
    siluMulBackward: (gate, up, dout, dgate, dup) => {
      const g = read(gate), u = read(up), d = read(dout);
      const s = g.map(unaryFns.sigmoid);
      write(dup, d.map((di, i) => di * g[i] * s[i]));
      write(dgate, d.map((di, i) => di * u[i] * s[i] * (1 + g[i] * (1 - s[i]))));
    },
    softmax: (x, out, log) => {
      const v = read(x);
      const cols = x.shape[x.rank - 1];
      const r = new Float64Array(v.length);
      for (let row = 0; row < v.length / cols; row++) {
        let max = -Infinity;
        for (let c = 0; c < cols; c++) max = Math.max(max, v[row * cols + c]);
        if (max === -Infinity) {
          // every entry -inf (a fully masked row): zeros, log-softmax -inf (the kernel contract)
          r.fill(log ? -Infinity : 0, row * cols, (row + 1) * cols);
          continue;
        }
        let sum = 0;
        for (let c = 0; c < cols; c++) sum += Math.exp(v[row * cols + c] - max);
        for (let c = 0; c < cols; c++) {
          const z = v[row * cols + c] - max;
          r[row * cols + c] = log ? z - Math.log(sum) : Math.exp(z) / sum;
        }
      }
      write(out, r);
    },
  };
}
