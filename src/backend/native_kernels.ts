// The argument layout of every native kernel, defined once for the backends that call
// C++/CUDA kernels through one generic entry point (cpu, cuda): a kernel's tensors, its
// integer attributes (shapes, strides in elements, dtype codes, flags) and its float
// attributes, in the order the native side reads them (documented beside each
// registration in native/cpu/kernels/ and native/cuda/kernels/).
//
// Kernels that compute in an activation dtype T (f32, or bf16 on a backend that lists it
// in computeDtypes; see kernels.ts) take T's DTYPE_CODE as their last int, after all the
// others; the cpu kernels only ever get f32 and ignore it.
import { BINARY_OPS, type Kernels, type QuantizedOperand, REDUCE_OPS, UNARY_OPS } from './kernels.js';
import { DTYPE_CODE } from '../tensor/dtype.js';
import type { Tensor } from '../tensor/tensor.js';

/**
 * Runs the native kernel `name`. `label` names a variant (binary:mul, a matmul shape)
 * for profiles, as a string or a function computed only when a profile is kept;
 * backends that do not profile ignore it.
 */
export type NativeRun = (name: string, tensors: Tensor[], ints: number[], floats?: number[], label?: string | (() => string)) => void;

/**
 * The weight buffers and the [format, rows, cols, blocksize, nested, nestedBlocksize]
 * attributes the quantized kernels take (native/cpu/kernels/qmatmul.cc); `filler`
 * stands in for buffers a format does not use.
 */
function quantizedOperands(w: QuantizedOperand, filler: Tensor): { tensors: Tensor[]; ints: number[]; offset: number } {
  if (w.format === 'int8') return { tensors: [w.cb, w.scb, filler, filler, filler], ints: [0, w.rows, w.cols, 0, 0, 0], offset: 0 };
  const n = w.nested;
  return {
    tensors: [w.packed, w.code, w.absmax, n?.absmax ?? filler, n?.code ?? filler],
    ints: [1, w.rows, w.cols, w.blocksize, n ? 1 : 0, n?.blocksize ?? 0],
    offset: n?.offset ?? 0,
  };
}

/**
 * Appends the (batch, head, row) strides of [B, H, T, D] operands, in order, to `ints`
 * (the last axis has unit stride). A plain loop: attention calls it with every launch.
 */
function pushHeadStrides(ints: number[], ts: readonly Tensor[]): void {
  for (const t of ts) {
    if (t.strides[3] !== 1 && t.shape[3] !== 1) throw new Error(`attention: ${t} needs a unit stride on its last axis`);
    ints.push(t.strides[0], t.strides[1], t.strides[2]);
  }
}

export interface NativeKernelOptions {
  /**
   * Attention reads and writes heads through their strides: the (batch, head, row)
   * strides of every [B, H, T, D] operand follow the dimensions (Backend.stridedAttention).
   */
  readonly stridedAttention: boolean;
}

/** The DTYPE_CODE of a kernel's activation dtype T, read off the tensor that has it. */
function code(t: Tensor): number {
  return DTYPE_CODE[t.dtype];
}

/** Every kernel, marshalled for a native addon's run entry. */
export function nativeKernels(run: NativeRun, { stridedAttention: strided }: NativeKernelOptions): Kernels {
  return {
    copy: (x, out) =>
      run('copy', [x, out], [x.rank, DTYPE_CODE[x.dtype], DTYPE_CODE[out.dtype], ...x.shape, ...x.strides, ...out.strides]),
    fill: (out, value) => run('fill', [out], [DTYPE_CODE[out.dtype], out.size], [value]),
    binary: (op, a, b, out) =>
      run('binary', [a, b, out], [BINARY_OPS.indexOf(op), out.rank, ...out.shape, ...a.strides, ...b.strides, code(out)], [], op),
    unary: (op, x, out) => run('unary', [x, out], [UNARY_OPS.indexOf(op), x.size, code(x)], [], op),
    reduce: (op, x, out, { outer, n, inner }) => run('reduce', [x, out], [REDUCE_OPS.indexOf(op), outer, n, inner, code(x)], [], op),
    softmax: (x, out, log) => {
      const cols = x.shape[x.rank - 1] ?? 1;
      run('softmax', [x, out], [x.size / Math.max(cols, 1), cols, log ? 1 : 0, code(x)]);
    },
    matmul: (a, b, out, { transA, transB, alpha, accumulate }) => {
      // Fold transposition into strides: op(a) is [M, K] with strides (ars, acs), op(b) [K, N] with (brs, bcs).
      const ra = a.rank, rb = b.rank;
      const M = out.shape[out.rank - 2], N = out.shape[out.rank - 1];
      const K = transA ? a.shape[ra - 2] : a.shape[ra - 1];
      const batch = out.rank === 3 ? out.shape[0] : 1;
      // A batch of one broadcasts (as in the reference), whatever its stride says.
      const abs = a.rank === 3 && a.shape[0] !== 1 ? a.strides[0] : 0, bbs = b.rank === 3 && b.shape[0] !== 1 ? b.strides[0] : 0;
      const [ars, acs] = transA ? [a.strides[ra - 1], a.strides[ra - 2]] : [a.strides[ra - 2], a.strides[ra - 1]];
      const [brs, bcs] = transB ? [b.strides[rb - 1], b.strides[rb - 2]] : [b.strides[rb - 2], b.strides[rb - 1]];
      run('matmul', [a, b, out], [batch, M, N, K, abs, ars, acs, bbs, brs, bcs, accumulate ? 1 : 0, DTYPE_CODE[b.dtype], code(a)], [alpha], () => `${batch > 1 ? `${batch}x` : ''}${M}x${N}x${K}`);
    },
    gather: (table, ids, out) =>
      run('gather', [table, ids, out], [table.shape[0], table.shape[1], ids.size, DTYPE_CODE[table.dtype], code(out)]),
    scatterAdd: (src, ids, out) => run('scatterAdd', [src, ids, out], [out.shape[0], out.shape[1], ids.size, code(src)]),
    rmsnorm: (x, weight, out, rstd, eps) => {
      const D = x.shape[x.rank - 1];
      run('rmsnorm', [x, weight, out, rstd], [x.size / D, D, DTYPE_CODE[weight.dtype], code(x)], [eps]);
    },
    rmsnormBackward: (x, weight, rstd, dy, dx, dweight) => {
      const D = x.shape[x.rank - 1];
      run('rmsnormBackward', [x, weight, rstd, dy, dx, dweight], [x.size / D, D, DTYPE_CODE[weight.dtype], code(x)]);
    },
    rmsnormBackwardDx: (x, weight, rstd, dy, dx, accumulate) => {
      const D = x.shape[x.rank - 1];
      run('rmsnormBackwardDx', [x, weight, rstd, dy, dx], [x.size / D, D, DTYPE_CODE[weight.dtype], accumulate ? 1 : 0, code(x)]);
    },
    rope: (x, cos, sin, out, inverse) => {
      const [B, T, H, D] = x.shape;
      run('rope', [x, cos, sin, out], [B, T, H, D, cos.shape[0] === 1 ? 0 : T * (D / 2), inverse ? 1 : 0, code(x)]);
    },
    attention: (q, k, v, keyMask, out, lse, { scale, causal }) => {
      const [B, Hq, T, D] = q.shape;
      const [, Hkv, S] = k.shape;
      const ints = [B, Hq, Hkv, T, S, D, causal ? 1 : 0, keyMask ? 1 : 0];
      if (strided) pushHeadStrides(ints, [q, k, v, out]);
      ints.push(code(q));
      run('attention', [q, k, v, keyMask ?? q, out, lse], ints, [scale]);
    },
    attentionBackward: (q, k, v, keyMask, out, lse, dout, dq, dk, dv, { scale, causal }) => {
      const [B, Hq, T, D] = q.shape;
      const [, Hkv, S] = k.shape;
      const ints = [B, Hq, Hkv, T, S, D, causal ? 1 : 0, keyMask ? 1 : 0];
      if (strided) pushHeadStrides(ints, [q, k, v, out, dout, dq, dk, dv]);
      ints.push(code(q));
      run('attentionBackward', [q, k, v, keyMask ?? q, out, lse, dout, dq, dk, dv], ints, [scale]);
    },
    crossEntropy: (logits, targets, loss, lse, ignoreIndex) =>
      run('crossEntropy', [logits, targets, loss, lse], [logits.shape[0], logits.shape[1], ignoreIndex, code(logits)]),
    crossEntropyBackward: (logits, targets, lse, dloss, dlogits, ignoreIndex) =>
      run('crossEntropyBackward', [logits, targets, lse, dloss, dlogits], [logits.shape[0], logits.shape[1], ignoreIndex, code(logits)]),
    dropoutMask: (out, p, seed, offset) => run('dropoutMask', [out], [out.size, seed, offset], [p]),
    dropout: (x, out, p, seed, offset) => run('dropout', [x, out], [out.size, seed, offset, code(x)], [p]),
    dropoutAdd: (x, out, p, seed, offset) => run('dropoutAdd', [x, out], [out.size, seed, offset, code(x)], [p]),
    adamw: (operands, a) => {
      // Plain loops: one call carries every trainable parameter (hundreds of operands).
      const tensors = new Array<Tensor>(4 * operands.length);
      const ints = new Array<number>(1 + operands.length);
      ints[0] = operands.length;
      for (let i = 0; i < operands.length; i++) {
        const o = operands[i];
        tensors[4 * i] = o.param;
        tensors[4 * i + 1] = o.grad;
        tensors[4 * i + 2] = o.expAvg;
        tensors[4 * i + 3] = o.expAvgSq;
        ints[1 + i] = o.param.size;
      }
      run('adamw', tensors, ints, [a.lr, a.beta1, a.beta2, a.eps, a.weightDecay, a.biasCorrection1, a.biasCorrection2, a.gradScale]);
    },
    sumSquares: (xs, out) => {
      const ints = new Array<number>(1 + xs.length);
      ints[0] = xs.length;
      for (let i = 0; i < xs.length; i++) ints[1 + i] = xs[i].size;
      run('sumSquares', [...xs, out], ints);
    },
    siluMul: (gate, up, out) => run('siluMul', [gate, up, out], [out.size, code(gate)]),
    siluMulBackward: (gate, up, dout, dgate, dup) => run('siluMulBackward', [gate, up, dout, dgate, dup], [dgate.size, code(gate)]),
    doraScale: (base, lora, g, out, s) => run('doraScale', [base, lora, g, out], [out.size / g.size, g.size, code(base)], [s]),
    doraScaleBackward: (base, lora, g, dout, dbase, dlora, dg, s) =>
      run('doraScaleBackward', [base, lora, g, dout, dbase, dlora, dg], [dbase.size / g.size, g.size, code(base)], [s]),
    doraNorm: (w, a, b, out, s) => run('doraNorm', [w, a, b, out], [w.shape[0], w.shape[1], a.shape[0], DTYPE_CODE[w.dtype]], [s]),
    quantizedMatmul: (a, w, out, { transW, accumulate }) => {
      const { tensors, ints, offset } = quantizedOperands(w, out);
      const [format, rows, cols, blocksize, nested, nestedBlocksize] = ints;
      run('quantizedMatmul', [a, ...tensors, out], [format, a.shape[0], rows, cols, transW ? 1 : 0, accumulate ? 1 : 0, blocksize, nested, nestedBlocksize, code(a)], [offset]);
    },
    dequantize: (w, out) => {
      const { tensors, ints, offset } = quantizedOperands(w, out);
      run('dequantize', [...tensors, out], ints, [offset]);
    },
    doraNormQuantized: (w, a, b, out, s) => {
      const { tensors, ints, offset } = quantizedOperands(w, out);
      run('doraNormQuantized', [...tensors, a, b, out], [...ints, a.shape[0]], [offset, s]);
    },
    quantizeInt8: (w, cb, scb) => run('quantizeInt8', [w, cb, scb], [w.shape[0], w.shape[1], DTYPE_CODE[w.dtype]]),
    quantizeBlockwise: (x, code, q, absmax, blocksize, pack4) =>
      run('quantizeBlockwise', [x, code, q, absmax], [x.size, DTYPE_CODE[x.dtype], code.size, blocksize, pack4 ? 1 : 0]),
  };
}

/** The kernels of `all` that the addon has built (a kernel it lacks is an unsupported op). */
export function builtKernels(all: Kernels, has: (name: string) => boolean): Partial<Kernels> {
  const built: Partial<Kernels> = {};
  for (const key of Object.keys(all) as (keyof Kernels)[]) {
    if (has(key)) Object.assign(built, { [key]: all[key] });
  }
  return built;
}
