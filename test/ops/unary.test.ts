import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import type { UnaryOp } from '../../src/backend/kernels.js';
import { unaryFns as exact } from '../../src/backend/reference/elementwise.js';
import { tensor } from '../../src/ops/creation.js';
import { abs, exp, log, neg, rsqrt, sigmoid, silu, sqrt, square } from '../../src/ops/unary.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData, values } from '../helpers.js';
import { atLevel, availableLevels, eachLevel } from './isa_levels.js';

interface Case {
  name: UnaryOp;
  fn: (x: Tensor) => Tensor;
  /** Largest error allowed against the exact (f64) value, in f32 ulps of that value. */
  ulps: number;
  /** Input range for random data and gradient checks. */
  lo: number;
  hi: number;
}

const cases: Case[] = [
  { name: 'neg', fn: neg, ulps: 0, lo: -3, hi: 3 },
  { name: 'exp', fn: exp, ulps: 1, lo: -90, hi: 89 },
  { name: 'log', fn: log, ulps: 1, lo: 1e-3, hi: 1e3 },
  { name: 'sqrt', fn: sqrt, ulps: 0.5, lo: 1e-3, hi: 1e3 },
  { name: 'rsqrt', fn: rsqrt, ulps: 1.5, lo: 1e-3, hi: 1e3 },
  { name: 'silu', fn: silu, ulps: 2, lo: -30, hi: 30 },
  { name: 'sigmoid', fn: sigmoid, ulps: 1.5, lo: -30, hi: 30 },
  { name: 'abs', fn: abs, ulps: 0, lo: -3, hi: 3 },
  { name: 'square', fn: square, ulps: 0.5, lo: -1e3, hi: 1e3 },
];

const f32 = (bits: number) => new Float32Array(new Uint32Array([bits]).buffer)[0];

/** Special values: signed zeros, infinities, NaN, subnormals, the edges of exp's range. */
const SPECIAL = Float32Array.from([
  0, -0, Infinity, -Infinity, NaN, f32(1), -f32(1), f32(0x007fffff), 1.1754944e-38, -1.1754944e-38, 1e-30, -1e-30, 1, -1, 0.5,
  2, 0.6931472, -0.6931472, 0.3465736, 10, -10, 15, -15, 20, -20, 30, -30, 80, -80, 87.3, -87.3, 88.72283, 88.72284, 89, -88.72,
  -100, -103.9, -103.97, -104, -110, 1e10, -1e10, 3.4028235e38, -3.4028235e38,
]);

/** |actual - exact| in units of the f32 spacing at the exact value (subnormal spacing below 2^-126). */
function ulpError(actual: number, expected: number): number {
  if (Number.isNaN(expected)) return Number.isNaN(actual) ? 0 : Infinity;
  const rounded = Math.fround(expected);
  if (!Number.isFinite(rounded) || !Number.isFinite(actual)) return actual === rounded ? 0 : Infinity;
  if (rounded === 0 && actual === 0) return Object.is(actual, rounded) ? 0 : Infinity;
  const mag = Math.abs(expected);
  const ulp = mag < 2 ** -126 ? 2 ** -149 : 2 ** (Math.floor(Math.log2(mag)) - 23);
  return Math.abs(actual - expected) / ulp;
}

function assertUlps(name: UnaryOp, xs: ArrayLike<number>, got: ArrayLike<number>, maxUlps: number, absFloor = 0): void {
  for (let i = 0; i < xs.length; i++) {
    const want = exact[name](xs[i]);
    const err = ulpError(got[i], want);
    const ok = err <= maxUlps || (absFloor > 0 && Math.abs(got[i] - want) <= absFloor);
    assert.ok(ok, `${name}(${xs[i]}) = ${got[i]}, expected ${want} (${err.toFixed(2)} ulp > ${maxUlps})`);
  }
}

function run(fn: (x: Tensor) => Tensor, xs: ArrayLike<number>, device = 'cpu'): Float64Array {
  return scope(() => values(fn(tensor(xs, [xs.length], { device }))));
}

for (const c of cases) {
  test(`${c.name}: special values and a dense sweep within ${c.ulps} ulp, at each ISA level`, async (t) => {
    const sweep = randomData(4099, 11, c.lo, c.hi);
    // silu's results below the normal range lose relative precision in x·sigmoid(x);
    // there the check is absolute.
    const floor = c.name === 'silu' ? 1e-40 : 0;
    await eachLevel(t, () => {
      assertUlps(c.name, SPECIAL, run(c.fn, SPECIAL), c.ulps, floor);
      assertUlps(c.name, sweep, run(c.fn, sweep), c.ulps, floor);
    });
  });

  test(`${c.name}: matches the reference backend on odd shapes and strided views, at each ISA level`, async (t) => {
    const tol = { atol: 1e-30, rtol: c.name === 'silu' ? 2.5e-7 : 2e-7 };
    await eachLevel(t, () => {
      for (const shape of [[1], [3, 5], [7, 33], [2, 3, 37]]) {
        const n = shape.reduce((a, b) => a * b, 1);
        // the reference keeps f64 values, so stay below exp's f32 overflow here
        const data = randomData(n, n, c.lo, Math.min(c.hi, 88));
        checkAgainstReference(c.fn, [{ shape, data }], tol);
        checkAgainstReference(c.fn, [{ shape, data, strided: true }], tol);
      }
    });
  });

  test(`${c.name}: gradient matches finite differences`, () => {
    // keep inputs where the function is smooth and of moderate size
    const [lo, hi] = ['log', 'sqrt', 'rsqrt'].includes(c.name) ? [0.5, 2] : [-2, 2];
    const data = (n: number) => Array.from(randomData(n, 5, lo, hi), (v) => (c.name === 'abs' && Math.abs(v) < 0.1 ? v + 0.3 : v));
    gradcheck(c.fn, [{ shape: [3, 5], data: data(15) }]);
    gradcheck(c.fn, [{ shape: [2, 3, 4], data: data(24), strided: true }]);
  });
}

test('the AVX2 and AVX-512 paths give bit-identical results', (t) => {
  const levels = availableLevels();
  if (!levels.includes('avx512')) {
    t.skip('this CPU has no AVX-512');
    return;
  }
  const xs = Float32Array.from([...SPECIAL, ...randomData(1001, 2, -120, 120)]);
  for (const c of cases) {
    const a = atLevel('avx2', () => run(c.fn, xs));
    const b = atLevel('avx512', () => run(c.fn, xs));
    for (let i = 0; i < xs.length; i++) assert.ok(Object.is(a[i], b[i]), `${c.name}(${xs[i]}): avx2 ${a[i]}, avx512 ${b[i]}`);
  }
});

test('signed zeros and infinities come out as IEEE specifies', () => {
  const zs = [0, -0, Infinity, -Infinity];
  const expect: Record<string, number[]> = {
    neg: [-0, 0, -Infinity, Infinity],
    exp: [1, 1, Infinity, 0],
    log: [-Infinity, -Infinity, Infinity, NaN],
    sqrt: [0, -0, Infinity, NaN],
    rsqrt: [Infinity, -Infinity, 0, NaN],
    sigmoid: [0.5, 0.5, 1, 0],
    abs: [0, 0, Infinity, Infinity],
    square: [0, 0, Infinity, Infinity],
  };
  for (const level of availableLevels()) {
    atLevel(level, () => {
      for (const c of cases) {
        const want = expect[c.name];
        if (want === undefined) continue;
        const got = run(c.fn, zs);
        want.forEach((w, i) => assert.ok(Object.is(got[i], w), `${level} ${c.name}(${zs[i]}) = ${got[i]}, expected ${w}`));
      }
    });
  }
});

test('abs has gradient 0 at 0, like PyTorch', () => {
  scope(() => {
    const x = tensor([-2, -0, 0, 3], [4], { requiresGrad: true });
    backward(abs(x), tensor([1, 1, 1, 1], [4]));
    assertClose(x.grad!.toArray(), [-1, 0, 0, 1], { atol: 0, rtol: 0 });
  });
});

test('unary ops take bf16 and int32 inputs; bf16 computes in f32 unless the backend computes in bf16', () => {
  scope(() => {
    const b = tensor([0.5, 2, 4], [3], { dtype: 'bf16' });
    const y = sqrt(b);
    // The bf16 compute contract (src/ops/util.ts computeDtype): bf16 out, rounded once, where the backend lists bf16.
    const bf16 = b.backend.computeDtypes?.includes('bf16') ?? false;
    assert.equal(y.dtype, bf16 ? 'bf16' : 'f32');
    assertClose(y.toArray(), [Math.SQRT1_2, Math.SQRT2, 2].map((v) => (bf16 ? roundTo('bf16', v) : v)), { atol: 0, rtol: 1e-7 });
    assertClose(square(tensor([-3, 7], [2], { dtype: 'int32' })).toArray(), [9, 49], { atol: 0, rtol: 0 });
  });
});
