import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { tensor } from '../../src/ops/creation.js';
import { colNorm, l2Norm, rowNorm } from '../../src/ops/norm.js';
import { div } from '../../src/ops/binary.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, values } from '../helpers.js';

// The DoRA docs' example: W0 (d = 4, k = 5), its column norms and unit-column matrix.
const W0 = [1, 7, 2, 8, 5, 2, 10, 4, 12, 10, 3, 15, 12, 18, 27, 4, 12, 16, 16, 36];
const M = [5.4772, 22.7596, 20.4939, 28.0713, 46.3681];
const VHAT = [
  0.182574, 0.307562, 0.09759, 0.284988, 0.107833, 0.365148, 0.439375, 0.19518, 0.427482, 0.215666, 0.547723, 0.659062,
  0.58554, 0.641223, 0.582297, 0.730297, 0.52725, 0.78072, 0.569976, 0.776396,
];

test('colNorm reproduces the DoRA docs example: m and the unit-column matrix', () => {
  for (const device of ['reference', 'cpu']) {
    scope(() => {
      const w = tensor(W0, [4, 5], { device });
      const m = colNorm(w);
      assert.deepEqual(m.shape, [5]);
      assertClose(values(m), M, { atol: 5e-5, rtol: 0 }, `${device} m`);
      assertClose(values(div(w, colNorm(w, { keepDims: true }))), VHAT, { atol: 5e-7, rtol: 0 }, `${device} V/||V||_c`);
    });
  }
});

test('rowNorm of a [out, in] weight gives one norm per output row (the transposed example)', () => {
  scope(() => {
    const wt = tensor(Array.from({ length: 20 }, (_, i) => W0[(i % 4) * 5 + Math.floor(i / 4)]), [5, 4]);
    assertClose(rowNorm(wt).toArray(), M, { atol: 5e-5, rtol: 0 });
    assert.deepEqual(rowNorm(wt, { keepDims: true }).shape, [5, 1]);
  });
});

test('l2Norm matches the reference on odd shapes, strided views, several axes', () => {
  const cases: [number[], number | number[], boolean][] = [
    [[7, 13], -1, false],
    [[7, 13], 0, true],
    [[3, 5, 9], 1, false],
    [[3, 5, 9], [0, 2], true],
    [[1, 33], -1, false],
  ];
  for (const [shape, axis, keepDims] of cases) {
    for (const strided of [false, true]) {
      checkAgainstReference((x: Tensor) => l2Norm(x, axis, { keepDims }), [{ shape, strided }], { atol: 1e-6, rtol: 1e-6 });
    }
  }
});

test('l2Norm gradients match finite differences', () => {
  gradcheck((x) => rowNorm(x), [{ shape: [4, 7] }]);
  gradcheck((x) => colNorm(x, { keepDims: true }), [{ shape: [5, 3], strided: true }]);
  gradcheck((x) => l2Norm(x, [0, 2]), [{ shape: [2, 3, 4] }]);
});

test('a zero row has norm 0 and gradient 0 (not NaN)', () => {
  for (const device of ['reference', 'cpu']) {
    scope(() => {
      const x = tensor([0, 0, 0, 3, 4, 0], [2, 3], { device, requiresGrad: true });
      const n = rowNorm(x);
      assertClose(values(n), [0, 5], { atol: 0, rtol: 0 });
      backward(n, tensor([1, 1], [2], { device }));
      assertClose(values(x.grad!), [0, 0, 0, 0.6, 0.8, 0], { atol: 1e-7, rtol: 0 }, `${device} grad`);
    });
  }
});

test('l2Norm rejects an axis out of range', () => {
  scope(() => {
    assert.throws(() => l2Norm(tensor([1, 2], [2]), 1), /l2Norm: axis 1 is out of range for rank 1/);
  });
});
