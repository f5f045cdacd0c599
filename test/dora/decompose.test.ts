// DoRA's decomposition against the worked example of FinLoRA's DoRA docs (numbers
// copied from the printed page) and against direct f64 computations written here.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decompose, DoraError, type DoraLayout, recompose } from '../../src/dora/decompose.js';
import { tensor } from '../../src/ops/creation.js';
import { contiguous, transpose } from '../../src/ops/view.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, randomData, testBackends } from '../helpers.js';

// The docs' W0 ∈ R^{4×5}.
const W0 = [
  [1, 7, 2, 8, 5],
  [2, 10, 4, 12, 10],
  [3, 15, 12, 18, 27],
  [4, 12, 16, 16, 36],
];
// As printed in the docs: m to 4 decimals, V̂ to 6.
const DOCS_M = [5.4772, 22.7596, 20.4939, 28.0713, 46.3681];
const DOCS_VHAT = [
  [0.182574, 0.307562, 0.09759, 0.284988, 0.107833],
  [0.365148, 0.439375, 0.19518, 0.427482, 0.215666],
  [0.547723, 0.659062, 0.58554, 0.641223, 0.582297],
  [0.730297, 0.52725, 0.78072, 0.569976, 0.776396],
];

const devices = ['reference', ...testBackends()];

function host(t: Tensor): number[] {
  return Array.from(contiguous(t).toArray());
}

function transposed(m: number[][]): number[][] {
  return m[0].map((_, j) => m.map((row) => row[j]));
}

/** The 2-norm of each column of a row-major d×k array, in f64. */
function columnNorms(flat: ArrayLike<number>, d: number, k: number): number[] {
  const out: number[] = [];
  for (let j = 0; j < k; j++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += flat[i * k + j] ** 2;
    out.push(Math.sqrt(s));
  }
  return out;
}

for (const device of devices) {
  test(`${device}: the docs' 4×5 example gives the printed m and unit-column V̂`, () => {
    scope(() => {
      const W = tensor(W0.flat(), [4, 5], { device });
      const { magnitude, direction } = decompose(W, 'dxk');
      assert.deepEqual(magnitude.shape, [5]);
      assert.deepEqual(direction.shape, [4, 5]);
      const m = host(magnitude);
      // to 4 decimals, as printed
      assert.deepEqual(m.map((v) => v.toFixed(4)), DOCS_M.map((v) => v.toFixed(4)));
      // to f32 precision against the exact column sums of squares (30, 518, 420, 788, 2150)
      const exactSums = [0, 1, 2, 3, 4].map((j) => W0.reduce((s, row) => s + row[j] * row[j], 0));
      assert.deepEqual(exactSums, [30, 518, 420, 788, 2150]);
      exactSums.forEach((s, j) => {
        const exact = Math.sqrt(s);
        assert.ok(Math.abs(m[j] - exact) <= exact * 2 ** -24, `m[${j}] = ${m[j]} is not sqrt(${s}) = ${exact} rounded to f32`);
      });
      const v = host(direction);
      // the printed 6 decimals (half a unit in the last place, plus f32 rounding)
      assertClose(v, DOCS_VHAT.flat(), { atol: 5e-7 + 1e-7, rtol: 0 }, 'V̂ vs the docs');
      assert.deepEqual(v.map((x) => x.toFixed(6)), DOCS_VHAT.flat().map((x) => x.toFixed(6)));
      for (const norm of columnNorms(v, 4, 5)) assert.ok(Math.abs(norm - 1) < 1e-6, `column norm ${norm}`);
    });
  });

  test(`${device}: the same matrix in the Linear [out, in] layout gives the same m and unit rows`, () => {
    scope(() => {
      const Wt = tensor(transposed(W0).flat(), [5, 4], { device });
      const { magnitude, direction } = decompose(Wt, 'linear');
      assert.deepEqual(magnitude.shape, [5]);
      assert.deepEqual(direction.shape, [5, 4]);
      const dxk = decompose(tensor(W0.flat(), [4, 5], { device }), 'dxk');
      assert.deepEqual(host(magnitude), host(dxk.magnitude));
      assertClose(host(direction), transposed(DOCS_VHAT).flat(), { atol: 6e-7, rtol: 0 }, 'rows of V̂ᵀ');
      assertClose(host(direction), host(transpose(dxk.direction)), { atol: 1e-7, rtol: 0 }, 'linear vs dxk');
      // a strided (transposed) view decomposes the same way
      const view = transpose(tensor(W0.flat(), [4, 5], { device }));
      assert.deepEqual(host(decompose(view, 'linear').magnitude), host(magnitude));
    });
  });

  test(`${device}: decompose then recompose with B = 0 returns W0, in both layouts`, () => {
    scope(() => {
      for (const layout of ['dxk', 'linear'] as const) {
        const data = layout === 'dxk' ? W0.flat() : transposed(W0).flat();
        const shape = layout === 'dxk' ? [4, 5] : [5, 4];
        const W = tensor(data, shape, { device });
        const { magnitude, direction } = decompose(W, layout);
        const r = 2;
        const B = tensor(new Array(shape[0] * r).fill(0), [shape[0], r], { device });
        const A = tensor(randomData(r * shape[1], 7), [r, shape[1]], { device });
        for (const V of [{ weight: W }, { direction }]) {
          const back = recompose({ magnitude, ...V, loraA: A, loraB: B, scale: 2, layout });
          assertClose(host(back), data, { atol: 1e-5, rtol: 1e-6 }, `${layout} ${Object.keys(V)[0]}`);
        }
        assertClose(host(recompose({ magnitude, direction, layout })), data, { atol: 1e-5, rtol: 1e-6 }, `${layout} without A and B`);
      }
    });
  });

  test(`${device}: recompose with non-zero B·A matches a direct f64 computation`, () => {
    scope(() => {
      const d = 6, k = 9, r = 3, s = 0.75;
      const w = Array.from(randomData(d * k, 11));
      const b = Array.from(randomData(d * r, 12, -0.5, 0.5));
      const a = Array.from(randomData(r * k, 13, -0.5, 0.5));
      const m = Array.from(randomData(k, 14, 0.5, 2));
      // W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_c, in f64, in the docs' d×k orientation
      const upd = new Float64Array(d * k);
      for (let i = 0; i < d; i++) {
        for (let j = 0; j < k; j++) {
          let ba = 0;
          for (let t = 0; t < r; t++) ba += b[i * r + t] * a[t * k + j];
          upd[i * k + j] = w[i * k + j] + s * ba;
        }
      }
      const norms = columnNorms(upd, d, k);
      const expected = Array.from(upd, (x, idx) => (m[idx % k] * x) / norms[idx % k]);
      const got = recompose({
        magnitude: tensor(m, [k], { device }),
        weight: tensor(w, [d, k], { device }),
        loraB: tensor(b, [d, r], { device }),
        loraA: tensor(a, [r, k], { device }),
        scale: s,
        layout: 'dxk',
      });
      assertClose(host(got), expected, { atol: 1e-5, rtol: 1e-5 }, 'dxk');
      // the Linear layout: W [out=k, in=d] is the transpose; lora_B [k, r] = Aᵀ, lora_A [r, d] = Bᵀ
      const tr = (x: number[], rows: number, cols: number) => Array.from({ length: rows * cols }, (_, idx) => x[(idx % rows) * cols + Math.floor(idx / rows)]);
      const gotLinear = recompose({
        magnitude: tensor(m, [k], { device }),
        weight: tensor(tr(w, d, k), [k, d], { device }),
        loraB: tensor(tr(a, r, k), [k, r], { device }),
        loraA: tensor(tr(b, d, r), [r, d], { device }),
        scale: s,
        layout: 'linear',
      });
      assertClose(host(gotLinear), tr(expected, d, k), { atol: 1e-5, rtol: 1e-5 }, 'linear');
      // the unit-norm V̂ in place of W0 is a different V once B·A ≠ 0
      const { direction } = decompose(tensor(w, [d, k], { device }), 'dxk');
      const viaDirection = recompose({
        magnitude: tensor(m, [k], { device }), direction, loraB: tensor(b, [d, r], { device }), loraA: tensor(a, [r, k], { device }), scale: s, layout: 'dxk',
      });
      assert.ok(host(viaDirection).some((x, i) => Math.abs(x - expected[i]) > 1e-3));
    });
  });

  test(`${device}: a zero column or row is reported by index, never turned into NaN`, () => {
    scope(() => {
      const zeroCol = W0.map((row) => row.map((x, j) => (j === 3 ? 0 : x)));
      const W = tensor(zeroCol.flat(), [4, 5], { device });
      assert.throws(() => decompose(W, 'dxk'), (e: unknown) => e instanceof DoraError && e.index === 3 && /column 3 \(0-based\) of W \[4, 5\] has norm 0/.test(e.message));
      assert.throws(() => decompose(tensor(transposed(zeroCol).flat(), [5, 4], { device }), 'linear'), /row 3 \(0-based\) of W \[5, 4\] has norm 0/);
      // the same matrix read as a Linear weight has no zero row
      assert.deepEqual(decompose(W, 'linear').magnitude.shape, [4]);
      // an update that cancels a column
      const B = tensor([1, 0, 0, 0], [4, 1], { device });
      const A = tensor([0, 0, 0, 0, -1], [1, 5], { device });
      const w = tensor([1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [4, 5], { device });
      const m = tensor([1, 1, 1, 1, 1], [5], { device });
      assert.throws(() => recompose({ magnitude: m, weight: w, loraA: A, loraB: B, scale: 5, layout: 'dxk' }), /column 4 \(0-based\) of weight \+ s·B·A \[4, 5\] has norm 0/);
    });
  });
}

test('shape errors name the operand and the shape it needs', () => {
  scope(() => {
    const W = tensor(W0.flat(), [4, 5]);
    const m = tensor(DOCS_M, [5]);
    const layout: DoraLayout = 'dxk';
    assert.throws(() => decompose(tensor([1, 2, 3], [3]), layout), /decompose: W must be a matrix, got shape \[3\]/);
    assert.throws(() => decompose(tensor([], [0, 3]), layout), /W \[0, 3\] is empty/);
    assert.throws(() => recompose({ magnitude: tensor([1, 2], [2]), weight: W, layout }), /magnitude has shape \[2\], but weight \[4, 5\] in layout 'dxk' needs 5 entries/);
    assert.throws(() => recompose({ magnitude: m, weight: W, loraB: tensor([1, 2, 3], [3, 1]), loraA: tensor([1, 2, 3, 4, 5], [1, 5]), layout }), /B has shape \[3, 1\], but weight \[4, 5\] needs B of shape \[4, r\]/);
    assert.throws(() => recompose({ magnitude: m, weight: W, loraB: tensor([1, 2, 3, 4], [4, 1]), loraA: tensor([1, 2, 3, 4], [1, 4]), layout }), /A has shape \[1, 4\], but B \[4, 1\] and weight \[4, 5\] need A of shape \[1, 5\]/);
    assert.throws(() => recompose({ magnitude: m, weight: W, loraB: tensor([1, 2, 3, 4], [4, 1]), layout }), /both loraA and loraB/);
    assert.throws(() => recompose({ magnitude: m, layout }), /weight \(or direction\) is required/);
  });
});
