import assert from 'node:assert/strict';
import { test } from 'node:test';
import { add, div, eq, maximum, mul, sub } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck } from '../helpers.js';

const ops: [string, (a: Tensor, b: Tensor) => Tensor][] = [
  ['add', add],
  ['sub', sub],
  ['mul', mul],
  ['div', div],
  ['maximum', maximum],
];

const shapes: [number[], number[]][] = [
  [[3, 5], [3, 5]],
  [[2, 3, 7], [7]],
  [[4, 1, 5], [1, 3, 1]],
  [[], [3, 2]],
  [[17, 33], [17, 1]],
];

for (const [name, op] of ops) {
  test(`${name}: matches the reference with broadcasting and strided views`, () => {
    for (const [sa, sb] of shapes) {
      checkAgainstReference(op, [{ shape: sa }, { shape: sb, strided: true }]);
      checkAgainstReference(op, [{ shape: sa, strided: true }, { shape: sb }]);
    }
  });
  test(`${name}: gradients match finite differences`, () => {
    // keep divisors away from zero and maximum's operands apart
    const specB = (shape: number[]) => ({ shape, data: name === 'div' ? Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => 1.5 + (i % 5) * 0.25) : undefined });
    gradcheck(op, [{ shape: [3, 4] }, specB([3, 4])]);
    gradcheck(op, [{ shape: [2, 3, 4], strided: true }, specB([4])]);
    gradcheck(op, [{ shape: [3, 1] }, specB([1, 5])]);
  });
}

test('maximum splits the gradient on ties like PyTorch', () => {
  gradcheck(maximum, [{ shape: [4], data: [1, 2, 3, 4] }, { shape: [4], data: [1, 0, 5, 4] }], { eps: 1e-9, tol: { atol: 0.6 } });
  scope(() => {
    const a = tensor([1, 2], [2], { requiresGrad: true });
    const b = tensor([1, 3], [2], { requiresGrad: true });
    const out = maximum(a, b);
    const { backward } = awaitBackward();
    backward(out, tensor([1, 1], [2]));
    assertClose(a.grad!.toArray(), [0.5, 0]);
    assertClose(b.grad!.toArray(), [0.5, 1]);
  });
});

test('numbers broadcast as scalars and eq gives 0/1', () => {
  scope(() => {
    const a = tensor([1, 2, 3], [3]);
    assertClose(add(a, 1).toArray(), [2, 3, 4]);
    assertClose(sub(10, a).toArray(), [9, 8, 7]);
    assertClose(eq(a, 2).toArray(), [0, 1, 0]);
    assert.throws(() => add(a, tensor([1, 2], [2])), /add: shapes \[3\] and \[2\] cannot be broadcast/);
  });
});

import { backward as tapeBackward } from '../../src/autograd/tape.js';
function awaitBackward() {
  return { backward: tapeBackward };
}
