// Ops on quantized weights: quantizedLinear (y = x Wᵀ + b with W decoded on the fly by
// the backend's quantizedMatmul kernel) and dequantize (W in f32, for DoRA's weight
// norm and for merging).
//
// The weight is frozen, as in QLoRA: quantizedLinear records a gradient for x (and the
// bias, when it trains) only. dx = dy W runs through the same kernel with W untransposed,
// so backward never materialises W either.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { sameBackend } from '../ops/util.js';
import { contiguous, reshape, sumTo } from '../ops/view.js';
import { formatShape, numel } from '../tensor/shape.js';
import { empty, type Tensor, view } from '../tensor/tensor.js';
import type { QuantizedWeight } from './weight.js';

function checkWeight(op: string, w: QuantizedWeight, x: Tensor): void {
  for (const t of w.tensors()) t.assertAlive(`${op} (quantized weight)`);
  if (w.backend !== x.backend) throw new Error(`${op}: x lives on ${x.backend.name}, the quantized weight on ${w.backend.name}`);
}

/** out = a · op(W) through the kernel; a [M, K] is made contiguous f32 first. */
function product(a: Tensor, w: QuantizedWeight, transW: boolean, bias: Tensor | null): Tensor {
  const N = transW ? w.rows : w.cols;
  const ac = contiguous(a);
  const out = empty([a.shape[0], N], 'f32', a.backend);
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
  } finally {
    if (ac !== a) ac.dispose();
  }
  return out;
}

/**
 * A Linear layer over a quantized frozen weight: x [..., in_features] f32,
 * W [out_features, in_features], bias [out_features] or none -> f32 [..., out_features].
 */
export function quantizedLinear(x: Tensor, w: QuantizedWeight, bias?: Tensor | null): Tensor {
  const op = 'quantizedLinear';
  x.assertAlive(op);
  checkWeight(op, w, x);
  if (x.rank < 1) throw new Error(`${op}: x must have rank >= 1, got ${formatShape(x.shape)}`);
  if (x.dtype !== 'f32') throw new Error(`${op}: x must be f32, got ${x.dtype}`);
  const inF = w.cols, outF = w.rows;
  if (x.shape[x.rank - 1] !== inF) {
    throw new Error(`${op}: x ${formatShape(x.shape)} has ${x.shape[x.rank - 1]} features, the quantized weight [${outF}, ${inF}] expects ${inF}`);
  }
  const b = bias ?? null;
  if (b !== null) {
    sameBackend(op, x, b);
    if (b.rank !== 1 || b.shape[0] !== outF || b.dtype !== 'f32') throw new Error(`${op}: bias must be f32 [${outF}], got ${b.dtype} ${formatShape(b.shape)}`);
  }
  const rows = numel(x.shape.slice(0, -1));
  const x2 = reshape(x, [rows, inF]);
  const out2 = product(x2, w, true, b);
  if (x2 !== x) x2.dispose();
  const y = reshape(out2, [...x.shape.slice(0, -1), outF]);
  if (y !== out2) out2.dispose();
  const inputs = b !== null ? [x, b] : [x];
  return record(y, op, inputs, (g) => {
    const grads: (Tensor | null)[] = [];
    if (x.requiresGrad) {
      const g2 = reshape(g, [rows, outF]);
      const dx2 = product(g2, w, false, null);
      if (g2 !== g) g2.dispose();
      const dx = reshape(dx2, x.shape);
      if (dx !== dx2) dx2.dispose();
      grads.push(dx);
    } else {
      grads.push(null);
    }
    if (b !== null) grads.push(b.requiresGrad ? sumTo(g, b.shape) : null);
    return grads;
  });
}

/** W as an f32 [out_features, in_features] tensor (a copy; the quantized weight stays). */
export function dequantize(w: QuantizedWeight): Tensor {
  for (const t of w.tensors()) t.assertAlive('dequantize');
  const out = empty(w.shape, 'f32', w.backend);
  if (out.size > 0) kernel(out.backend, 'dequantize')(w, out);
  return out;
}
