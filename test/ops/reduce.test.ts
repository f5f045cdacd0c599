import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { tensor } from '../../src/ops/creation.js';
import { max, mean, sum } from '../../src/ops/reduce.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData, values } from '../helpers.js';
import { eachLevel } from './isa_levels.js';

const ops: [string, typeof sum][] = [
  ['sum', sum],
  ['mean', mean],
  ['max', max],
];

const axisCases: [number[], number | number[] | undefined, boolean][] = [
  [[7, 13], 0, false],
  [[7, 13], 1, true],
  [[7, 13], -1, false],
  [[7, 13], [0, 1], false],
  [[7, 13], undefined, true],
  [[3, 5, 9], [0, 2], true],
  [[3, 5, 9], [-1, -3], false],
  [[3, 5, 9], 1, false],
  [[2, 1, 33], 1, false],
  [[4, 600], 0, false],
  [[1], 0, false],
];

for (const [name, op] of ops) {
  test(`${name}: matches the reference over axes, keepDims, negative axes, strided input, at each ISA level`, async (t) => {
    await eachLevel(t, () => {
      for (const [shape, axes, keepDims] of axisCases) {
        for (const strided of [false, true]) {
          checkAgainstReference((x) => op(x, axes, { keepDims }), [{ shape, strided }], { atol: 1e-6, rtol: 1e-6 });
        }
      }
    });
  });

  test(`${name}: long reductions take the split path and agree with the reference, at each ISA level`, async (t) => {
    // [1, 140003] over the last axis and [70001, 3] / [300, 1100] over the first split n
    // into parts; [5, 1100] spans several column blocks.
    const shapes: [number[], number][] = [
      [[1, 140003], -1],
      [[70001, 3], 0],
      [[300, 1100], 0],
      [[5, 1100], 0],
      [[3, 40000], 1],
    ];
    const inputs = shapes.map(([shape], i) => randomData(shape[0] * shape[1], 40 + i));
    const expected = shapes.map(([shape, axis], i) => scope(() => values(op(tensor(inputs[i], shape, { device: 'reference' }), axis))));
    await eachLevel(t, (level) => {
      shapes.forEach(([shape, axis], i) => {
        const got = scope(() => values(op(tensor(inputs[i], shape), axis)));
        assertClose(got, expected[i], { atol: 1e-6, rtol: 1e-6 }, `${level} ${name} of [${shape}] over ${axis}`);
      });
    });
  });

  test(`${name}: gradients match finite differences`, () => {
    gradcheck((x) => op(x, 1), [{ shape: [3, 4] }]);
    gradcheck((x) => op(x, [0, 2], { keepDims: true }), [{ shape: [2, 3, 4], strided: true }]);
    gradcheck((x) => op(x), [{ shape: [5, 3] }]);
    gradcheck((x) => op(x, -2), [{ shape: [4, 3, 2] }]);
  });
}

test('sums accumulate in f64: 2^24 + 1000 ones - 2^24 is 1000 in rows and columns, at each ISA level', async (t) => {
  const data = [2 ** 24, ...new Array<number>(1000).fill(1), -(2 ** 24)];
  await eachLevel(t, () => {
    scope(() => {
      assert.equal(sum(tensor(data, [1, data.length]), 1).item(), 1000);
      assert.equal(sum(tensor(data, [data.length, 1]), 0).item(), 1000);
      const cols = tensor(data.flatMap((v) => [v, 2 * v, 0]), [data.length, 3]);
      assertClose(values(sum(cols, 0)), [1000, 2000, 0], { atol: 0, rtol: 0 });
    });
  });
});

test('max propagates NaN from any position and handles -inf, at each ISA level', async (t) => {
  await eachLevel(t, () => {
    scope(() => {
      for (const n of [5, 16, 37]) {
        for (const pos of [0, 3, n - 1]) {
          const row = Array.from(randomData(n, n + pos));
          row[pos] = NaN;
          assert.ok(Number.isNaN(max(tensor(row, [n])).item()), `row of ${n} with NaN at ${pos}`);
          // the same data down a column
          const col = tensor(row.flatMap((v) => [v, 1]), [n, 2]);
          const m = values(max(col, 0));
          assert.ok(Number.isNaN(m[0]) && m[1] === 1, `column of ${n} with NaN at ${pos}`);
        }
      }
      assert.equal(max(tensor([-Infinity, -Infinity], [2])).item(), -Infinity);
    });
  });
});

test('max splits the gradient between ties', () => {
  for (const device of ['reference', 'cpu']) {
    scope(() => {
      const x = tensor([1, 3, 3, 2, 5, 0, 5, 5], [2, 4], { device, requiresGrad: true });
      backward(max(x, 1), tensor([1, 6], [2], { device }));
      assertClose(values(x.grad!), [0, 0.5, 0.5, 0, 2, 0, 2, 2], { atol: 1e-7, rtol: 0 }, device);
    });
  }
});

test('reductions report shapes and reject bad axes', () => {
  scope(() => {
    const x = tensor(randomData(24, 1), [2, 3, 4]);
    assert.deepEqual(sum(x, 1).shape, [2, 4]);
    assert.deepEqual(sum(x, -1, { keepDims: true }).shape, [2, 3, 1]);
    assert.deepEqual(mean(x).shape, []);
    assert.deepEqual(max(x, [0, 1], { keepDims: true }).shape, [1, 1, 4]);
    assert.throws(() => sum(x, 3), /sum: axis 3 is out of range for rank 3/);
    assert.throws(() => max(x, [1, -2]), /max: repeated axis/);
    assertClose([mean(tensor([1, 2, 3, 4], [4])).item()], [2.5], { atol: 0, rtol: 0 });
  });
});

test('reductions of an empty axis give the identity', () => {
  scope(() => {
    const e: Tensor = tensor([], [2, 0]);
    assertClose(values(sum(e, 1)), [0, 0], { atol: 0, rtol: 0 });
    assert.deepEqual(Array.from(values(max(e, 1))), [-Infinity, -Infinity]);
  });
});
