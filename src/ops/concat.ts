// Joining and gathering along an axis: concat, stack, indexSelect. All move data with
// the `copy` kernel through strided views (any dtype, any input strides); backward
// slices the output gradient (concat) or adds it back at the selected positions
// (indexSelect, where repeated ids accumulate, as in PyTorch's index_select).
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape, normAxis } from '../tensor/shape.js';
import { empty, Tensor, view } from '../tensor/tensor.js';
import { sameBackend } from './util.js';
import { slice, unsqueeze } from './view.js';

/** A view of `len` entries of t along axis from `start` (no autograd record). */
function along(t: Tensor, axis: number, start: number, len: number): Tensor {
  const shape = [...t.shape];
  shape[axis] = len;
  return view(t, shape, t.strides, t.offset + start * t.strides[axis]);
}

/** Copies src into the view `dst` of a larger tensor, then drops the view handle. */
function copyInto(src: Tensor, dst: Tensor): void {
  if (dst.size > 0) kernel(src.backend, 'copy')(src, dst);
  dst.dispose();
}

/** Joins tensors along an existing axis; all must share rank, dtype and the other dimensions. */
export function concat(tensors: readonly Tensor[], axis = 0): Tensor {
  if (tensors.length === 0) throw new Error('concat: no tensors to join');
  const first = tensors[0];
  sameBackend('concat', ...tensors);
  if (first.rank === 0) throw new Error('concat: cannot join rank-0 tensors (use stack)');
  const ax = normAxis(axis, first.rank, 'concat');
  const shape = [...first.shape];
  shape[ax] = 0;
  for (const t of tensors) {
    const fits = t.rank === first.rank && t.shape.every((d, i) => i === ax || d === first.shape[i]);
    if (!fits) {
      throw new Error(`concat: shapes ${tensors.map((u) => formatShape(u.shape)).join(', ')} differ outside axis ${axis}`);
    }
    if (t.dtype !== first.dtype) throw new Error(`concat: dtypes differ (${first.dtype} and ${t.dtype})`);
    shape[ax] += t.shape[ax];
  }
  const out = empty(shape, first.dtype, first.backend);
  const starts: number[] = [];
  let start = 0;
  for (const t of tensors) {
    starts.push(start);
    copyInto(t, along(out, ax, start, t.shape[ax]));
    start += t.shape[ax];
  }
  return record(
    out,
    'concat',
    tensors,
    (g) => tensors.map((t, i) => (t.requiresGrad ? slice(g, ax, starts[i], starts[i] + t.shape[ax]) : null)),
    [],
  );
}

/** Joins same-shape tensors along a new axis. */
export function stack(tensors: readonly Tensor[], axis = 0): Tensor {
  if (tensors.length === 0) throw new Error('stack: no tensors to join');
  const first = tensors[0];
  const ax = normAxis(axis, first.rank + 1, 'stack');
  for (const t of tensors) {
    if (t.rank !== first.rank || t.shape.some((d, i) => d !== first.shape[i])) {
      throw new Error(`stack: shapes ${tensors.map((u) => formatShape(u.shape)).join(', ')} differ`);
    }
  }
  const parts = tensors.map((t) => unsqueeze(t, ax));
  const out = concat(parts, ax);
  // The unsqueezed views stay reachable from out's autograd record; only drop them
  // here when nothing was recorded.
  if (out.gradFn === null) for (const p of parts) p.dispose();
  return out;
}

/** Maximal runs of consecutive ids: [position in ids, first id, length]. */
function idRuns(ids: readonly number[]): [number, number, number][] {
  const runs: [number, number, number][] = [];
  for (let i = 0; i < ids.length; i++) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] + last[2] === ids[i]) last[2]++;
    else runs.push([i, ids[i], 1]);
  }
  return runs;
}

function hostIds(ids: Tensor | readonly number[], op: string): number[] {
  if (!(ids instanceof Tensor)) return [...ids];
  if (ids.dtype !== 'int32') throw new Error(`${op}: ids must be int32, got ${ids.dtype}`);
  if (ids.rank !== 1) throw new Error(`${op}: ids must be one-dimensional, got ${formatShape(ids.shape)}`);
  if (ids.isContiguous()) return Array.from(ids.toArray());
  const c = empty(ids.shape, 'int32', ids.backend);
  kernel(ids.backend, 'copy')(ids, c);
  const values = Array.from(c.toArray());
  c.dispose();
  return values;
}

/**
 * Entries of x at `ids` along an axis (PyTorch's index_select): out has x's shape with
 * ids.length on that axis. Ids are integers in [0, x.shape[axis]); repeats are allowed
 * and their gradients add up.
 */
export function indexSelect(x: Tensor, axis: number, ids: Tensor | readonly number[]): Tensor {
  x.assertAlive('indexSelect');
  const ax = normAxis(axis, x.rank, 'indexSelect');
  const list = hostIds(ids, 'indexSelect');
  const dim = x.shape[ax];
  for (const id of list) {
    if (!Number.isInteger(id) || id < 0 || id >= dim) {
      throw new Error(`indexSelect: id ${id} is out of range for axis ${axis} of ${formatShape(x.shape)}`);
    }
  }
  const shape = [...x.shape];
  shape[ax] = list.length;
  const out = empty(shape, x.dtype, x.backend);
  const runs = idRuns(list);
  for (const [pos, id, len] of runs) copyInto(along(x, ax, id, len), along(out, ax, pos, len));
  return record(out, 'indexSelect', [x], (g) => {
    // In g's dtype: repeated ids add g's rows into gx with the binary kernel, whose operands share one dtype.
    const gx = empty(x.shape, g.dtype === 'bf16' ? 'bf16' : 'f32', g.backend);
    kernel(g.backend, 'fill')(gx, 0);
    const distinct = new Set(list).size === list.length;
    for (const [pos, id, len] of runs) {
      const src = along(g, ax, pos, len);
      const dst = along(gx, ax, id, len);
      if (distinct) {
        copyInto(src, dst);
      } else {
        // gx[id..] += g[pos..]: the binary kernel writes contiguous output, so add into
        // a temporary and copy it back; runs are applied in order, so repeats accumulate.
        const sum = empty(dst.shape, gx.dtype, g.backend);
        if (sum.size > 0) kernel(g.backend, 'binary')('add', dst, src, sum);
        copyInto(sum, dst);
        sum.dispose();
      }
      src.dispose();
    }
    return [gx];
  }, []);
}
