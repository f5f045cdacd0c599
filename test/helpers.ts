// Test helpers: closeness checks, seeded data, running an op on every backend against
// the reference backend, and gradient checks by central finite differences.
import assert from 'node:assert/strict';
import { backward } from '../src/autograd/tape.js';
import { cudaAddonBuilt, loadCudaAddon } from '../src/backend/cuda/addon.js';
import { getBackend } from '../src/backend/registry.js';
import { read, ReferenceBackend, write } from '../src/backend/reference/reference.js';
import { tensor } from '../src/ops/creation.js';
import { contiguous } from '../src/ops/view.js';
import { Rng } from '../src/tensor/rng.js';
import { numel, type Shape } from '../src/tensor/shape.js';
import { scope, type Tensor, view } from '../src/tensor/tensor.js';

export interface Tolerance {
  atol?: number;
  rtol?: number;
}

/** |a - e| <= atol + rtol * |e| everywhere; the message names the worst element. */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance = {}, what = 'values'): void {
  const atol = tol.atol ?? 1e-5;
  const rtol = tol.rtol ?? 1e-5;
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} != ${expected.length}`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (a === e) continue;
    const excess = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (!(excess <= 0) && (worst < 0 || excess > worstExcess || Number.isNaN(excess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    assert.fail(`${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol})`);
  }
}

/** Seeded uniform values in [lo, hi). */
export function randomData(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.next());
}

export interface InputSpec {
  shape: Shape;
  data?: ArrayLike<number>;
  /** Build this input as a non-contiguous view: a transposed copy transposed back. */
  strided?: boolean;
  dtype?: 'f32' | 'bf16' | 'f16' | 'int32' | 'int8' | 'uint8';
  noGrad?: boolean;
}

/** Why the CUDA addon cannot run here (unbuilt, unloadable, no GPU visible), or false when it can. */
export function cudaUnavailable(): string | false {
  if (!cudaAddonBuilt()) return 'the CUDA addon is not built (npm run build:cuda needs nvcc and cuBLAS)';
  try {
    if (loadCudaAddon().deviceCount() === 0) return 'no GPU is visible on this machine';
  } catch (e) {
    return `the CUDA addon does not load here: ${e instanceof Error ? e.message : String(e)}`;
  }
  return false;
}

/** The backends tests run on besides the reference: cpu, plus cuda when FINLORA_DEVICE=cuda. */
export function testBackends(): string[] {
  return process.env.FINLORA_DEVICE && process.env.FINLORA_DEVICE !== 'cpu' ? ['cpu', process.env.FINLORA_DEVICE] : ['cpu'];
}

function materialise(spec: InputSpec, index: number, device: string, seed: number): Tensor {
  const data = spec.data ?? randomData(numel(spec.shape), seed * 7919 + index);
  const dtype = spec.dtype ?? 'f32';
  if (!spec.strided || spec.shape.length < 2) return tensor(data, spec.shape, { device, dtype });
  // Store the transpose of the last two axes, then view it back: same values, strided layout.
  const r = spec.shape.length;
  const rows = spec.shape[r - 2], cols = spec.shape[r - 1];
  const batch = numel(spec.shape) / (rows * cols);
  const t = new Float32Array(data.length);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[b * rows * cols + j * rows + i] = data[b * rows * cols + i * cols + j];
  const shapeT = [...spec.shape.slice(0, r - 2), cols, rows];
  const stored = tensor(t, shapeT, { device, dtype });
  const strides = [...stored.strides];
  [strides[r - 2], strides[r - 1]] = [strides[r - 1], strides[r - 2]];
  const strided = view(stored, spec.shape, strides, 0);
  stored.dispose();
  return strided;
}

/** Host values of any tensor (strided or not), as numbers. */
export function values(t: Tensor): Float64Array {
  if (t.backend.name === 'reference') return read(t);
  return scope(() => Float64Array.from(contiguous(t).toArray()));
}

/**
 * Runs fn with the reference backend computing in the activation dtypes `device` computes
 * in, so the two take the same path through the ops (a bf16 input stays bf16 on both, or
 * is widened on both).
 */
export function withReferenceAs<T>(device: string, fn: () => T): T {
  const ref = getBackend('reference');
  if (!(ref instanceof ReferenceBackend)) throw new Error('withReferenceAs: the reference backend is not a ReferenceBackend');
  const saved = ref.computeDtypes;
  ref.computeDtypes = getBackend(device).computeDtypes ?? ['f32'];
  try {
    return fn();
  } finally {
    ref.computeDtypes = saved;
  }
}

/**
 * Runs fn on the reference backend and on every test backend with the same inputs and
 * checks the outputs agree. The reference computes in the activation dtypes of the
 * backend it is compared with; a bf16 output is allowed one bf16 rounding more (the
 * reference rounds an f64 result, a backend its f32 one).
 */
export function checkAgainstReference(
  fn: (...xs: Tensor[]) => Tensor | Tensor[],
  specs: InputSpec[],
  tol: Tolerance = { atol: 1e-5, rtol: 1e-4 },
  seed = 1,
): void {
  const run = (device: string) =>
    scope(() => {
      const xs = specs.map((s, i) => materialise(s, i, device, seed));
      const out = fn(...xs);
      return (Array.isArray(out) ? out : [out]).map((t) => ({ dtype: t.dtype, values: values(t) }));
    });
  for (const device of testBackends()) {
    const expected = withReferenceAs(device, () => run('reference'));
    const actual = run(device);
    assert.equal(actual.length, expected.length);
    actual.forEach((a, i) => {
      assert.equal(a.dtype, expected[i].dtype, `${device} output ${i}: dtype`);
      const t = a.dtype === 'bf16' ? { atol: Math.max(tol.atol ?? 1e-5, 2 ** -8), rtol: Math.max(tol.rtol ?? 1e-5, 2 ** -7) } : tol;
      assertClose(a.values, expected[i].values, t, `${device} output ${i}`);
    });
  }
}

/**
 * Checks the gradients of fn on the reference backend (f64) against central finite
 * differences of L = sum(fn(x) * w) for a fixed random w, then checks every test
 * backend's analytic gradients against the reference ones.
 */
export function gradcheck(
  fn: (...xs: Tensor[]) => Tensor,
  specs: InputSpec[],
  opts: { eps?: number; tol?: Tolerance; backendTol?: Tolerance; seed?: number } = {},
): void {
  const eps = opts.eps ?? 1e-6;
  const tol = opts.tol ?? { atol: 1e-6, rtol: 1e-5 };
  const seed = opts.seed ?? 3;
  const analytic = (device: string) =>
    scope(() => {
      const xs = specs.map((s, i) => {
        const t = materialise(s, i, device, seed);
        t.requiresGrad = !s.noGrad;
        return t;
      });
      const out = fn(...xs);
      const w = tensor(randomData(out.size, seed + 99), out.shape, { device });
      const outc = contiguous(out);
      // L = sum(out * w): its gradient with respect to out is w
      backward(outc, w);
      return xs.map((x) => (x.grad ? values(x.grad) : null));
    });
  const ref = analytic('reference');
  // finite differences on the reference backend, in f64
  scope(() => {
    const xs = specs.map((s, i) => materialise(s, i, 'reference', seed));
    const loss = () =>
      scope(() => {
        const out = fn(...xs);
        const o = read(out);
        const w = randomData(out.size, seed + 99);
        let l = 0;
        for (let i = 0; i < o.length; i++) l += o[i] * w[i];
        return l;
      });
    xs.forEach((x, k) => {
      if (specs[k].noGrad) return;
      const base = read(x);
      const fd = new Float64Array(base.length);
      for (let i = 0; i < base.length; i++) {
        const v = base.slice();
        v[i] = base[i] + eps;
        write(x, v);
        const lp = loss();
        v[i] = base[i] - eps;
        write(x, v);
        const lm = loss();
        fd[i] = (lp - lm) / (2 * eps);
      }
      write(x, base);
      const g = ref[k];
      assert.ok(g !== null, `input ${k} got no gradient`);
      assertClose(g, fd, tol, `gradient of input ${k} vs finite differences`);
    });
  });
  for (const device of testBackends()) {
    const got = analytic(device);
    got.forEach((g, k) => {
      if (specs[k].noGrad) return;
      assert.ok(g !== null, `${device}: input ${k} got no gradient`);
      assertClose(g, ref[k]!, opts.backendTol ?? { atol: 1e-4, rtol: 1e-3 }, `${device}: gradient of input ${k}`);
    });
  }
}

export { getBackend };
