// Shared input handling for the neural-network ops (embedding, cross-entropy,
// attention): contiguous copies that keep the dtype (int32 ids and targets, bf16
// tables), made without autograd records and disposed after the kernel call.
import { kernel } from '../backend/backend.js';
import { type DType } from '../tensor/dtype.js';
import { contiguousStrides, formatShape, type Shape } from '../tensor/shape.js';
import { empty, type Tensor, view } from '../tensor/tensor.js';

/**
 * Runs fn with a contiguous version of each input in the requested dtype (the
 * input's own dtype where null); temporaries are disposed afterwards.
 */
export function withContiguous<T>(inputs: readonly [Tensor, DType | null][], fn: (...xs: Tensor[]) => T): T {
  const temps: Tensor[] = [];
  const xs = inputs.map(([x, dtype]) => {
    const want = dtype ?? x.dtype;
    if (x.dtype === want && x.isContiguous()) return x;
    const c = empty(x.shape, want, x.backend);
    kernel(x.backend, 'copy')(x, c);
    temps.push(c);
    return c;
  });
  try {
    return fn(...xs);
  } finally {
    for (const t of temps) t.dispose();
  }
}

export function assertShape(op: string, x: Tensor, shape: Shape, what: string): void {
  if (x.rank !== shape.length || x.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${op}: ${what} must have shape ${formatShape(shape)}, got ${formatShape(x.shape)}`);
  }
}

/** Runs fn with views of contiguous tensors in the flat shapes the kernels take. */
export function withShapes<T>(items: readonly [Tensor, Shape][], fn: (...xs: Tensor[]) => T): T {
  const views = items.map(([x, shape]) => view(x, shape, contiguousStrides(shape), x.offset));
  try {
    return fn(...views);
  } finally {
    for (const v of views) v.dispose();
  }
}
