// Shape ops. reshape, transpose, permute, slice, expand, squeeze and unsqueeze return
// views (no copy) when the strides allow it; contiguous() and cast() copy through the
// `copy` kernel. Each records its backward.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import type { DType } from '../tensor/dtype.js';
import { contiguousStrides, formatShape, normAxis, numel, type Shape, checkShape } from '../tensor/shape.js';
import { empty, type Tensor, view } from '../tensor/tensor.js';
import { computeDtype, gradDtype } from './util.js';

/** A contiguous copy (or x itself when already contiguous). */
export function contiguous(x: Tensor): Tensor {
  x.assertAlive('contiguous');
  if (x.isContiguous()) return x;
  return copyAs(x, x.dtype, 'contiguous');
}

/** A contiguous copy, always new. */
export function clone(x: Tensor): Tensor {
  x.assertAlive('clone');
  return copyAs(x, x.dtype, 'clone');
}

/** Converts to another dtype (a copy; floats to ints truncate and saturate). */
export function cast(x: Tensor, dtype: DType): Tensor {
  x.assertAlive('cast');
  if (x.dtype === dtype) return x;
  return copyAs(x, dtype, 'cast');
}

function copyAs(x: Tensor, dtype: DType, name: string): Tensor {
  const out = empty(x.shape, dtype, x.backend);
  kernel(x.backend, 'copy')(x, out);
  return record(out, name, [x], (g) => [g], []);
}

/** Infers one -1 dimension and checks the element count. */
function resolveShape(x: Tensor, shape: Shape): number[] {
  const out = [...shape];
  const unknown = out.indexOf(-1);
  if (unknown !== out.lastIndexOf(-1)) throw new Error(`reshape: more than one -1 in ${formatShape(shape)}`);
  if (unknown >= 0) {
    const known = numel(out.filter((_, i) => i !== unknown));
    if (known === 0 || x.size % known !== 0) throw new Error(`reshape: cannot reshape ${formatShape(x.shape)} to ${formatShape(shape)}`);
    out[unknown] = x.size / known;
  }
  checkShape(out, 'reshape');
  if (numel(out) !== x.size) throw new Error(`reshape: cannot reshape ${formatShape(x.shape)} (${x.size} elements) to ${formatShape(shape)}`);
  return out;
}

/**
 * Strides for viewing x with a new shape without copying, or null when the layout
 * does not allow it. Walks x's axes from the last, grouping runs that are laid out
 * contiguously with each other ("chunks"); each chunk must be covered exactly by a
 * run of new axes (PyTorch's view rule).
 */
function viewStrides(x: Tensor, shape: number[]): number[] | null {
  if (x.isContiguous() || x.size === 0) return contiguousStrides(shape);
  const newStrides = new Array<number>(shape.length).fill(1);
  let vd = shape.length - 1;
  let base = x.strides[x.rank - 1];
  let tensorNumel = 1;
  let viewNumel = 1;
  for (let td = x.rank - 1; td >= 0; td--) {
    tensorNumel *= x.shape[td];
    const chunkEnds = td === 0 || (x.shape[td - 1] !== 1 && x.strides[td - 1] !== tensorNumel * base);
    if (!chunkEnds) continue;
    while (vd >= 0 && (viewNumel < tensorNumel || shape[vd] === 1)) {
      newStrides[vd] = viewNumel * base;
      viewNumel *= shape[vd];
      vd--;
    }
    if (viewNumel !== tensorNumel) return null;
    if (td > 0) {
      base = x.strides[td - 1];
      tensorNumel = 1;
      viewNumel = 1;
    }
  }
  return vd === -1 ? newStrides : null;
}

/** Reshape; a view when possible, else a copy. One dimension may be -1. */
export function reshape(x: Tensor, shape: Shape): Tensor {
  x.assertAlive('reshape');
  const target = resolveShape(x, shape);
  const strides = viewStrides(x, target);
  const out = strides ? view(x, target, strides, x.offset) : reshapeCopy(x, target);
  return record(out, 'reshape', [x], (g) => [reshape(g, x.shape)], []);
}

function reshapeCopy(x: Tensor, shape: number[]): Tensor {
  const c = empty(x.shape, x.dtype, x.backend);
  kernel(x.backend, 'copy')(x, c);
  const out = view(c, shape, contiguousStrides(shape), 0);
  c.dispose();
  return out;
}

/** Permutes axes (a view). */
export function permute(x: Tensor, axes: readonly number[]): Tensor {
  x.assertAlive('permute');
  if (axes.length !== x.rank) throw new Error(`permute: ${axes.length} axes for a tensor of rank ${x.rank}`);
  const norm = axes.map((a) => normAxis(a, x.rank, 'permute'));
  if (new Set(norm).size !== norm.length) throw new Error(`permute: repeated axis in [${axes.join(', ')}]`);
  const out = view(x, norm.map((a) => x.shape[a]), norm.map((a) => x.strides[a]), x.offset);
  const inverse = new Array<number>(norm.length);
  norm.forEach((a, i) => (inverse[a] = i));
  return record(out, 'permute', [x], (g) => [permute(g, inverse)], []);
}

/** Swaps two axes (a view); by default the last two. */
export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const axes = x.shape.map((_, i) => i);
  const i = normAxis(a, x.rank, 'transpose');
  const j = normAxis(b, x.rank, 'transpose');
  [axes[i], axes[j]] = [axes[j], axes[i]];
  return permute(x, axes);
}

/** Elements [start, end) along an axis, every `step`-th (a view). Negative indices count from the end. */
export function slice(x: Tensor, axis: number, start: number, end?: number, step = 1): Tensor {
  x.assertAlive('slice');
  const ax = normAxis(axis, x.rank, 'slice');
  const dim = x.shape[ax];
  const clamp = (v: number) => Math.max(0, Math.min(dim, v < 0 ? v + dim : v));
  const s = clamp(start);
  const e = clamp(end ?? dim);
  if (!Number.isInteger(step) || step < 1) throw new Error(`slice: step must be a positive integer, got ${step}`);
  const len = Math.max(0, Math.ceil((e - s) / step));
  const shape = [...x.shape];
  shape[ax] = len;
  const strides = [...x.strides];
  strides[ax] = x.strides[ax] * step;
  const out = view(x, shape, strides, x.offset + s * x.strides[ax]);
  return record(out, 'slice', [x], (g) => {
    const gx = empty(x.shape, gradDtype(x), g.backend);
    kernel(g.backend, 'fill')(gx, 0);
    const target = view(gx, shape, contiguousStrides(x.shape).map((st, i) => (i === ax ? st * step : st)), s * contiguousStrides(x.shape)[ax]);
    kernel(g.backend, 'copy')(g, target);
    target.dispose();
    return [gx];
  }, []);
}

/** Broadcasts to a larger shape (a view with stride 0 on expanded axes). */
export function expand(x: Tensor, shape: Shape): Tensor {
  x.assertAlive('expand');
  const lead = shape.length - x.rank;
  if (lead < 0) throw new Error(`expand: cannot expand ${formatShape(x.shape)} to ${formatShape(shape)}`);
  const strides = shape.map((d, i) => {
    const k = i - lead;
    if (k < 0) return 0;
    if (x.shape[k] === d) return x.strides[k];
    if (x.shape[k] === 1) return 0;
    throw new Error(`expand: cannot expand ${formatShape(x.shape)} to ${formatShape(shape)}`);
  });
  const out = view(x, shape, strides, x.offset);
  return record(out, 'expand', [x], (g) => [sumTo(g, x.shape)], []);
}

/** Inserts an axis of size 1 (a view). */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  const ax = normAxis(axis, x.rank + 1, 'unsqueeze');
  const shape = [...x.shape];
  shape.splice(ax, 0, 1);
  return reshape(x, shape);
}

/** Removes an axis of size 1 (a view). */
export function squeeze(x: Tensor, axis: number): Tensor {
  const ax = normAxis(axis, x.rank, 'squeeze');
  if (x.shape[ax] !== 1) throw new Error(`squeeze: axis ${axis} of ${formatShape(x.shape)} is not 1`);
  return reshape(x, x.shape.filter((_, i) => i !== ax));
}

/**
 * Sums a gradient over the axes that broadcasting expanded, back to `shape`
 * (the backward of every broadcasting op). No autograd record: used inside backward.
 */
export function sumTo(g: Tensor, shape: Shape): Tensor {
  const lead = g.rank - shape.length;
  const axes = g.shape.map((d, i) => (d !== 1 && (i < lead || shape[i - lead] === 1) ? i : -1)).filter((i) => i >= 0);
  if (axes.length > 1 && computeDtype(g.backend, g) === 'bf16') {
    // Partial sums over the first axes stay f32, so the gradient is rounded to bf16 once.
    const wide = copyNoGrad(g, 'f32');
    const summed = sumTo(wide, shape);
    const result = copyNoGrad(summed, 'bf16');
    if (summed !== wide) summed.dispose();
    wide.dispose();
    return result;
  }
  let out = g;
  const owned: Tensor[] = [];
  for (const i of axes) {
    const next = reduceAxisSum(out, i);
    owned.push(next);
    out = next;
  }
  // Leading axes of size 1 need no sum but must still go: [1, m, n] -> [m, n].
  const result = out === g && lead === 0 ? g : reshapeNoGrad(out, shape);
  for (const t of owned) if (t !== result) t.dispose();
  return result;
}

function reduceAxisSum(x: Tensor, axis: number): Tensor {
  const dtype = computeDtype(x.backend, x);
  const c = x.isContiguous() && x.dtype === dtype ? x : copyNoGrad(x, dtype);
  const outer = numel(x.shape.slice(0, axis));
  const inner = numel(x.shape.slice(axis + 1));
  const shape = [...x.shape];
  shape[axis] = 1;
  const out = empty(shape, dtype, x.backend);
  kernel(x.backend, 'reduce')('sum', c, out, { outer, n: x.shape[axis], inner });
  if (c !== x) c.dispose();
  return out;
}

function copyNoGrad(x: Tensor, dtype: DType): Tensor {
  const c = empty(x.shape, dtype, x.backend);
  kernel(x.backend, 'copy')(x, c);
  return c;
}

function reshapeNoGrad(x: Tensor, shape: Shape): Tensor {
  const c = x.isContiguous() ? x : copyNoGrad(x, computeDtype(x.backend, x));
  const out = view(c, [...shape], contiguousStrides(shape), c.offset);
  if (c !== x) c.dispose();
  return out;
}
