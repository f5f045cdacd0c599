// Shared checks for ops: operands on one backend, f32 compute inputs, scalars.
import { kernel } from '../backend/backend.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { formatShape } from '../tensor/shape.js';

export type TensorLike = Tensor | number;

export function sameBackend(op: string, ...ts: Tensor[]): void {
  const b = ts[0].backend;
  for (const t of ts) {
    t.assertAlive(op);
    if (t.backend !== b) throw new Error(`${op}: operands live on different devices (${b.name} and ${t.backend.name})`);
  }
}

/**
 * Runs fn with an f32, contiguous version of each input; temporaries made for it are
 * disposed afterwards. Ops whose kernels want contiguous f32 call this.
 */
export function withF32Contiguous<T>(inputs: Tensor[], fn: (...xs: Tensor[]) => T): T {
  const temps: Tensor[] = [];
  const xs = inputs.map((x) => {
    if (x.dtype === 'f32' && x.isContiguous()) return x;
    const c = empty(x.shape, 'f32', x.backend);
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

export function assertRank(op: string, x: Tensor, rank: number, what = 'input'): void {
  if (x.rank !== rank) throw new Error(`${op}: ${what} must have rank ${rank}, got ${formatShape(x.shape)}`);
}

export function assertDtype(op: string, x: Tensor, dtypes: readonly string[], what = 'input'): void {
  if (!dtypes.includes(x.dtype)) throw new Error(`${op}: ${what} must be ${dtypes.join(' or ')}, got ${x.dtype}`);
}
