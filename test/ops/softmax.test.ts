import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { tensor } from '../../src/ops/creation.js';
import { logSoftmax, softmax } from '../../src/ops/softmax.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData, values } from '../helpers.js';
import { eachLevel } from './isa_levels.js';

const fns: [string, (x: Tensor, axis?: number) => Tensor][] = [
  ['softmax', softmax],
  ['logSoftmax', logSoftmax],
];

const tol = { atol: 1e-7, rtol: 1e-6 };

for (const [name, fn] of fns) {
  test(`${name}: matches the reference on odd shapes, every axis, strided views, at each ISA level`, async (t) => {
    const cases: [number[], number][] = [
      [[3, 7], -1],
      [[4, 33], 1],
      [[5, 1], -1],
      [[2, 3, 17], -1],
      [[2, 3, 17], 0],
      [[2, 3, 17], 1],
      [[1, 300], -1],
    ];
    await eachLevel(t, () => {
      for (const [shape, axis] of cases) {
        for (const strided of [false, true]) {
          const n = shape.reduce((a, b) => a * b, 1);
          checkAgainstReference((x) => fn(x, axis), [{ shape, strided, data: randomData(n, n, -8, 8) }], tol);
        }
      }
    });
  });

  test(`${name}: stable for large offsets and wide ranges, at each ISA level`, async (t) => {
    const n = 4 * 129;
    const offset = Float32Array.from(randomData(n, 1, -3, 3), (v, i) => v + (i < n / 2 ? 1e4 : -1e4));
    const wide = randomData(n, 2, -100, 100);
    await eachLevel(t, () => {
      checkAgainstReference((x) => fn(x), [{ shape: [4, 129], data: offset }], tol);
      checkAgainstReference((x) => fn(x), [{ shape: [4, 129], data: wide }], { atol: 1e-7, rtol: 1e-5 });
      scope(() => {
        const y = values(fn(tensor(offset, [4, 129])));
        assert.ok(y.every(Number.isFinite), `${name} of 1e4-offset rows is finite`);
      });
    });
  });

  test(`${name}: gradients match finite differences on every axis`, () => {
    gradcheck((x) => fn(x), [{ shape: [3, 5] }]);
    gradcheck((x) => fn(x, 0), [{ shape: [4, 3], strided: true }]);
    gradcheck((x) => fn(x, 1), [{ shape: [2, 3, 4] }]);
  });
}

test('softmax rows sum to 1 for long rows, at each ISA level', async (t) => {
  const cols = 5003;
  const data = randomData(2 * cols, 9, -20, 20);
  await eachLevel(t, () => {
    scope(() => {
      const y = values(softmax(tensor(data, [2, cols])));
      for (let r = 0; r < 2; r++) {
        let s = 0;
        for (let c = 0; c < cols; c++) s += y[r * cols + c];
        assertClose([s], [1], { atol: 2e-6, rtol: 0 }, `row ${r} sum`);
      }
    });
  });
});

test('special rows: all -inf gives zeros (log: -inf); NaN or +inf gives NaN, at each ISA level', async (t) => {
  const rows = [
    [-Infinity, -Infinity, -Infinity],
    [-Infinity, 0, -Infinity],
    [NaN, -Infinity, -Infinity],
    [1, NaN, 2],
    [Infinity, 0, 1],
  ];
  const soft = [[0, 0, 0], [0, 1, 0], [NaN, NaN, NaN], [NaN, NaN, NaN], [NaN, NaN, NaN]];
  const logSoft = [[-Infinity, -Infinity, -Infinity], [-Infinity, 0, -Infinity], [NaN, NaN, NaN], [NaN, NaN, NaN], [NaN, NaN, NaN]];
  // Rows of 21 columns take the vector body and the tail of both vector widths.
  const wide = (row: number[]) => Array.from({ length: 21 }, (_, i) => row[i % 3]);
  await eachLevel(t, () => {
    for (const device of ['reference', 'cpu']) {
      scope(() => {
        rows.forEach((row, r) => {
          for (const [fn, want] of [
            [softmax, soft[r]],
            [logSoftmax, logSoft[r]],
          ] as const) {
            const got = values(fn(tensor(row, [1, 3], { device })));
            assert.deepEqual(Array.from(got), want, `${device} ${fn.name}(${row})`);
            const gotWide = values(fn(tensor(wide(row), [1, 21], { device })));
            const wantWide = wide(want).map((v) => (v === 1 ? 1 / 7 : v === 0 && fn === logSoftmax ? -Math.log(7) : v));
            assertClose(gotWide, wantWide, { atol: 1e-7, rtol: 1e-6 }, `${device} ${fn.name} wide (${row})`);
          }
        });
      });
    }
  });
});

test('a fully masked row passes zero gradient through softmax', () => {
  scope(() => {
    const x = tensor([-Infinity, -Infinity, 0.5, 1.5], [2, 2], { requiresGrad: true });
    backward(softmax(x), tensor([1, 2, 3, 4], [2, 2]));
    const g = x.grad!.toArray();
    assert.deepEqual(Array.from(g.slice(0, 2)), [0, 0]);
  });
});

test('softmax and logSoftmax agree: exp(logSoftmax) = softmax', () => {
  scope(() => {
    const x = tensor(randomData(3 * 40, 4, -30, 30), [3, 40]);
    assertClose(values(softmax(x)), Float64Array.from(values(logSoftmax(x)), Math.exp), { atol: 1e-7, rtol: 2e-6 });
  });
});
