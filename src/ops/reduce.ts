// Reductions over axes: sum, mean, max (sums accumulate in f64 in the kernels), in the
// input's compute dtype T (computeDtype: bf16 out for bf16 in where the backend computes in bf16).
import { kernel } from '../backend/backend.js';
import type { ReduceOp } from '../backend/kernels.js';
import { record } from '../autograd/tape.js';
import { normAxis, numel } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { div, eq, mul } from './binary.js';
import { contiguous, expand, reshape } from './view.js';
import { computeDtype, withContiguousAs } from './util.js';

export interface ReduceOptions {
  keepDims?: boolean;
}

function normAxes(x: Tensor, axes: number | readonly number[] | undefined, op: string): number[] {
  if (axes === undefined) return x.shape.map((_, i) => i);
  const list = typeof axes === 'number' ? [axes] : [...axes];
  const norm = list.map((a) => normAxis(a, x.rank, op));
  if (new Set(norm).size !== norm.length) throw new Error(`${op}: repeated axis in [${list.join(', ')}]`);
  return norm.sort((a, b) => a - b);
}

/** Reduces the given axes (keeping them as size 1) with no autograd record. */
function reduceKeep(op: ReduceOp, x: Tensor, axes: number[]): Tensor {
  const dtype = computeDtype(x.backend, x);
  if (dtype === 'bf16' && axes.length > 1) {
    // Partial sums over the first axes stay f32, so the result is rounded to bf16 once.
    const wide = withContiguousAs('f32', [x], (xf) => reduceKeep(op, xf, axes));
    const out = empty(wide.shape, 'bf16', x.backend);
    kernel(x.backend, 'copy')(wide, out);
    wide.dispose();
    return out;
  }
  return withContiguousAs(dtype, [x], (xc) => {
    let cur = xc;
    for (const axis of axes) {
      const shape = [...cur.shape];
      const n = shape[axis];
      shape[axis] = 1;
      const out = empty(shape, dtype, x.backend);
      kernel(x.backend, 'reduce')(op, cur, out, { outer: numel(cur.shape.slice(0, axis)), n, inner: numel(cur.shape.slice(axis + 1)) });
      if (cur !== xc) cur.dispose();
      cur = out;
    }
    return cur === xc ? contiguousCopy(xc) : cur;
  });
}

function contiguousCopy(x: Tensor): Tensor {
  const out = empty(x.shape, x.dtype, x.backend);
  kernel(x.backend, 'copy')(x, out);
  return out;
}

function finish(kept: Tensor, x: Tensor, axes: number[], keepDims: boolean): Tensor {
  if (keepDims) return kept;
  const shape = x.shape.filter((_, i) => !axes.includes(i));
  const out = reshape(kept, shape);
  if (out !== kept) kept.dispose();
  return out;
}

/** Sum over axes (all by default). */
export function sum(x: Tensor, axes?: number | readonly number[], opts: ReduceOptions = {}): Tensor {
  const ax = normAxes(x, axes, 'sum');
  const out = finish(reduceKeep('sum', x, ax), x, ax, opts.keepDims ?? false);
  return record(out, 'sum', [x], (g) => {
    const kept = reshape(g, x.shape.map((d, i) => (ax.includes(i) ? 1 : d)));
    return [contiguous(expand(kept, x.shape))];
  }, []);
}

/** Mean over axes (all by default). */
export function mean(x: Tensor, axes?: number | readonly number[], opts: ReduceOptions = {}): Tensor {
  const ax = normAxes(x, axes, 'mean');
  const count = ax.reduce((n, a) => n * x.shape[a], 1);
  return div(sum(x, ax, opts), count);
}

/** Max over axes (all by default); ties share the gradient evenly. */
export function max(x: Tensor, axes?: number | readonly number[], opts: ReduceOptions = {}): Tensor {
  const ax = normAxes(x, axes, 'max');
  const kept = reduceKeep('max', x, ax);
  const out = finish(kept, x, ax, opts.keepDims ?? false);
  return record(out, 'max', [x], (g) => {
    const keptShape = x.shape.map((d, i) => (ax.includes(i) ? 1 : d));
    const mask = eq(x, reshape(out, keptShape));
    const count = reduceKeep('sum', mask, ax);
    const share = div(mask, count);
    return [mul(share, reshape(g, keptShape))];
  });
}
