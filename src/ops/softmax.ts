// softmax and logSoftmax along an axis, through the `softmax` kernel (last axis,
// max-subtracted, f64 sums; bf16 in and out where computeDtype says so). Another axis is moved last by a permuted view, made
// contiguous, and the result is viewed back, so the output is then a strided view.
// A row of all -inf gives zeros (log: -inf); see the kernel contract in kernels.ts.
//
// Backward (y the output, dy its gradient, sums along the axis):
//   softmax:     dx = y·(dy − sum(dy·y))
//   log-softmax: dx = dy − softmax(x)·sum(dy)
import { kernel } from '../backend/backend.js';
import { noGrad, record } from '../autograd/tape.js';
import { normAxis } from '../tensor/shape.js';
import { empty, scope, type Tensor } from '../tensor/tensor.js';
import { mul, sub } from './binary.js';
import { sum } from './reduce.js';
import { exp } from './unary.js';
import { permute } from './view.js';
import { computeDtype, withContiguousAs } from './util.js';

function compute(x: Tensor, axis: number, log: boolean, op: string): [Tensor, number] {
  x.assertAlive(op);
  const ax = normAxis(axis, x.rank, op);
  const last = Math.max(x.rank - 1, 0);
  const dtype = computeDtype(x.backend, x);
  const run = (t: Tensor) =>
    withContiguousAs(dtype, [t], (tc) => {
      const out = empty(t.shape, dtype, t.backend);
      kernel(t.backend, 'softmax')(tc, out, log);
      return out;
    });
  if (ax === last) return [run(x), ax];
  // Swap the axis with the last one; the swap is its own inverse.
  const axes = x.shape.map((_, i) => (i === ax ? last : i === last ? ax : i));
  const y = noGrad(() =>
    scope(() => {
      const moved = run(permute(x, axes));
      return permute(moved, axes);
    }),
  );
  return [y, ax];
}

/** exp(x - max) / sum(exp(x - max)) along an axis (the last by default). */
export function softmax(x: Tensor, axis = -1): Tensor {
  const [y, ax] = compute(x, axis, false, 'softmax');
  return record(y, 'softmax', [x], (g) => [scope(() => mul(y, sub(g, sum(mul(g, y), ax, { keepDims: true }))))], [y]);
}

/** x - max - log(sum(exp(x - max))) along an axis (the last by default). */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  const [y, ax] = compute(x, axis, true, 'logSoftmax');
  return record(y, 'logSoftmax', [x], (g) => [scope(() => sub(g, mul(exp(y), sum(g, ax, { keepDims: true }))))], [y]);
}
