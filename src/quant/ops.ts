// Ops on quantized weights: quantizedLinear (y = x Wᵀ + b with W decoded on the fly by
// the backend's quantizedMatmul kernel), quantizedDoraNorm (DoRA's weight norm over a
// quantized base, W read as stored where the backend has the kernel) and dequantize (W
// in f32, for merging and for the norm on backends without that kernel).
//
// The weight is frozen, as in QLoRA: quantizedLinear records a gradient for x (and the
// bias, when it trains) only. dx = dy W runs through the same kernel with W untransposed,
// so backward never materialises W either.
//
// The activation dtype T follows src/ops/util.ts computeDtype with x as the only
// floating input (the codes are no activation): bf16 x on a backend that computes in
// bf16 stays bf16 (the kernel decodes W and accumulates in f32, rounding out once), so a
// bf16 model's quantized layers need no widening and rounding passes; anywhere else x is
// widened to f32. y and dx are T.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { doraNorm } from '../ops/dora.js';
import { type ComputeDType, computeDtype, sameBackend, withContiguous, withContiguousAs } from '../ops/util.js';
import { reshape, sumTo } from '../ops/view.js';
import { isFloat } from '../tensor/dtype.js';
import { formatShape, numel } from '../tensor/shape.js';
import { empty, type Tensor, view } from '../tensor/tensor.js';
import type { QuantizedWeight } from './weight.js';

function checkWeight(op: string, w: QuantizedWeight, x: Tensor, xName = 'x'): void {
  for (const t of w.tensors()) t.assertAlive(`${op} (quantized weight)`);
  if (w.backend !== x.backend) throw new Error(`${op}: ${xName} lives on ${x.backend.name}, the quantized weight on ${w.backend.name}`);
}

/** out = a · op(W) + bias through the kernel, in T; a [M, K] is made contiguous T first. */
function product(a: Tensor, w: QuantizedWeight, transW: boolean, bias: Tensor | null, dtype: ComputeDType): Tensor {
  const N = transW ? w.rows : w.cols;
  return withContiguousAs(dtype, [a], (ac) => {
    const out = empty([a.shape[0], N], dtype, a.backend);
    try {
      if (bias !== null) {
        const bb = view(bias, out.shape, [0, bias.strides[0]], bias.offset);
        kernel(out.backend, 'copy')(bb, out);
        bb.dispose();
      }
      if (out.size > 0) kernel(a.backend, 'quantizedMatmul')(ac, w, out, { transW, accumulate: bias !== null });
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  });
}

/**
 * A Linear layer over a quantized frozen weight: x [..., in_features] (f32, or bf16),
 * W [out_features, in_features], bias [out_features] (f32 or bf16) or none ->
 * [..., out_features] in x's activation dtype T (computeDtype: bf16 for bf16 x on a
 * backend that computes in bf16, else f32).
 */
export function quantizedLinear(x: Tensor, w: QuantizedWeight, bias?: Tensor | null): Tensor {
  const op = 'quantizedLinear';
  x.assertAlive(op);
  checkWeight(op, w, x);
  if (x.rank < 1) throw new Error(`${op}: x must have rank >= 1, got ${formatShape(x.shape)}`);
  if (!isFloat(x.dtype)) throw new Error(`${op}: x must be a floating tensor (f32 or bf16), got ${x.dtype}`);
  const inF = w.cols, outF = w.rows;
  if (x.shape[x.rank - 1] !== inF) {
    throw new Error(`${op}: x ${formatShape(x.shape)} has ${x.shape[x.rank - 1]} features, the quantized weight [${outF}, ${inF}] expects ${inF}`);
  }
  const b = bias ?? null;
  if (b !== null) {
    sameBackend(op, x, b);
    if (b.rank !== 1 || b.shape[0] !== outF || !isFloat(b.dtype)) throw new Error(`${op}: bias must be a floating [${outF}], got ${b.dtype} ${formatShape(b.shape)}`);
  }
  const dtype = computeDtype(x.backend, x);
  const rows = numel(x.shape.slice(0, -1));
  const x2 = reshape(x, [rows, inF]);
  const out2 = product(x2, w, true, b, dtype);
  if (x2 !== x) x2.dispose();
  const y = reshape(out2, [...x.shape.slice(0, -1), outF]);
  if (y !== out2) out2.dispose();
  const inputs = b !== null ? [x, b] : [x];
  // Backward reads no activation: dx = dy·W decodes the frozen weight, db sums dy.
  return record(y, op, inputs, (g) => {
    const grads: (Tensor | null)[] = [];
    if (x.requiresGrad) {
      const g2 = reshape(g, [rows, outF]);
      const dx2 = product(g2, w, false, null, dtype);
      if (g2 !== g) g2.dispose();
      const dx = reshape(dx2, x.shape);
      if (dx !== dx2) dx2.dispose();
      grads.push(dx);
    } else {
      grads.push(null);
    }
    if (b !== null) grads.push(b.requiresGrad ? sumTo(g, b.shape) : null);
    return grads;
  }, []);
}

/** W as an f32 [out_features, in_features] tensor (a copy; the quantized weight stays). */
export function dequantize(w: QuantizedWeight): Tensor {
  for (const t of w.tensors()) t.assertAlive('dequantize');
  const out = empty(w.shape, 'f32', w.backend);
  if (out.size > 0) kernel(out.backend, 'dequantize')(w, out);
  return out;
}

/**
 * DoRA's weight norm n_i = ‖W_i + s·(B·A)_i‖₂ (src/ops/dora.ts doraNorm) for a quantized
 * W [out, in], a [r, in] and b [out, r] -> f32 [out], no gradient. A backend with the
 * doraNormQuantized kernel (cuda) decodes W as it reads it, so no f32 copy of W is made
 * (64 MiB per 4096 × 4096 projection and forward); elsewhere (cpu, whose doraNorm reads
 * a dense W) W is dequantized to f32 for doraNorm, the same values.
 */
export function quantizedDoraNorm(w: QuantizedWeight, a: Tensor, b: Tensor, s: number): Tensor {
  const op = 'quantizedDoraNorm';
  checkWeight(op, w, a, 'a');
  sameBackend(op, a, b);
  if (a.rank !== 2 || b.rank !== 2 || a.shape[1] !== w.cols || b.shape[0] !== w.rows || b.shape[1] !== a.shape[0]) {
    throw new Error(`${op}: a [r, ${w.cols}] and b [${w.rows}, r] expected for the quantized weight [${w.rows}, ${w.cols}], got ${formatShape(a.shape)} and ${formatShape(b.shape)}`);
  }
  const k = w.backend.kernels.doraNormQuantized;
  if (k === undefined) {
    const dense = dequantize(w);
    try {
      return doraNorm(dense, a, b, s);
    } finally {
      dense.dispose();
    }
  }
  const out = empty([w.rows], 'f32', w.backend);
  if (out.size > 0) withContiguous([[a, 'f32'], [b, 'f32']], (ac, bc) => k(w, ac, bc, out, s));
  return out;
}
