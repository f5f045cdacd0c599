// Shared input handling for the neural-network ops (embedding, cross-entropy,
// attention): shape checks and flat views of contiguous tensors for the kernels
// (contiguous copies that keep the dtype are util.ts's withContiguous).
import { contiguousStrides, formatShape, sameShape, type Shape } from '../tensor/shape.js';
import { type Tensor, view } from '../tensor/tensor.js';

export function assertShape(op: string, x: Tensor, shape: Shape, what: string): void {
  if (x.rank !== shape.length || x.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${op}: ${what} must have shape ${formatShape(shape)}, got ${formatShape(x.shape)}`);
  }
}

/** Runs fn with views of contiguous tensors in the flat shapes the kernels take. */
export function withShapes<T>(items: readonly [Tensor, Shape][], fn: (...xs: Tensor[]) => T): T {
  // A tensor already in its flat shape goes as it is: a view per operand per call adds up.
  const views = items.map(([x, shape]) => (sameShape(x.shape, shape) ? x : view(x, shape, contiguousStrides(shape), x.offset)));
  try {
    return fn(...views);
  } finally {
    views.forEach((v, i) => {
      if (v !== items[i][0]) v.dispose();
    });
  }
}
