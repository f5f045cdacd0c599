// Shared checks for ops: operands on one backend, the activation dtype an op computes
// in, contiguous inputs in that dtype, scalars.
import { type Backend, kernel } from '../backend/backend.js';
import { type DType, isFloat } from '../tensor/dtype.js';
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

/** An activation dtype: what an op computes and returns (Backend.computeDtypes). */
export type ComputeDType = 'f32' | 'bf16';

/** Whether the backend's kernels take bf16 activations. */
export function computesBf16(backend: Backend): boolean {
  return backend.computeDtypes?.includes('bf16') ?? false;
}

/**
 * The activation dtype T of an op (the bf16 compute rule, in one place): bf16 when
 * every floating input is bf16 and the backend computes in bf16; otherwise f32, and
 * bf16 inputs are widened to f32 first. Integer inputs (ids, targets) do not count.
 */
export function computeDtype(backend: Backend, ...inputs: Tensor[]): ComputeDType {
  if (!computesBf16(backend)) return 'f32';
  let any = false;
  for (const t of inputs) {
    if (!isFloat(t.dtype)) continue;
    if (t.dtype !== 'bf16') return 'f32';
    any = true;
  }
  return any ? 'bf16' : 'f32';
}

/** The dtype of a tensor's gradient: bf16 for a bf16 tensor where the backend computes in bf16, else f32. */
export function gradDtype(t: Tensor): ComputeDType {
  return computeDtype(t.backend, t);
}

/**
 * Runs fn with a contiguous version of each input in the dtype given beside it (the
 * input's own dtype where null); temporaries made for it are disposed afterwards. No
 * autograd records: callers record their own backward.
 */
export function withContiguous<R>(inputs: readonly (readonly [Tensor, DType | null])[], fn: (...xs: Tensor[]) => R): R {
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

/** Runs fn with a contiguous version of each input in dtype T (see withContiguous). */
export function withContiguousAs<R>(dtype: DType, inputs: Tensor[], fn: (...xs: Tensor[]) => R): R {
  // Inputs already in T and contiguous (the usual case) need no temporaries at all.
  if (inputs.every((x) => x.dtype === dtype && x.isContiguous())) return fn(...inputs);
  return withContiguous(inputs.map((x) => [x, dtype] as const), fn);
}

/**
 * Runs fn with an f32, contiguous version of each input; temporaries made for it are
 * disposed afterwards. Ops whose kernels want contiguous f32 call this.
 */
export function withF32Contiguous<T>(inputs: Tensor[], fn: (...xs: Tensor[]) => T): T {
  return withContiguousAs('f32', inputs, fn);
}

export function assertRank(op: string, x: Tensor, rank: number, what = 'input'): void {
  if (x.rank !== rank) throw new Error(`${op}: ${what} must have rank ${rank}, got ${formatShape(x.shape)}`);
}

export function assertDtype(op: string, x: Tensor, dtypes: readonly string[], what = 'input'): void {
  if (!dtypes.includes(x.dtype)) throw new Error(`${op}: ${what} must be ${dtypes.join(' or ')}, got ${x.dtype}`);
}
