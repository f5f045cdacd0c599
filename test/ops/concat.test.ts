import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { tensor } from '../../src/ops/creation.js';
import { concat, indexSelect, stack } from '../../src/ops/concat.js';
import { mul } from '../../src/ops/binary.js';
import { slice } from '../../src/ops/view.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, values } from '../helpers.js';

test('concat matches the reference on every axis, strided inputs and other dtypes', () => {
  const cat = (axis: number) => (...xs: Tensor[]) => concat(xs, axis);
  checkAgainstReference(cat(0), [{ shape: [2, 5] }, { shape: [3, 5], strided: true }, { shape: [1, 5] }]);
  checkAgainstReference(cat(1), [{ shape: [3, 2] }, { shape: [3, 7], strided: true }]);
  checkAgainstReference(cat(-1), [{ shape: [2, 3, 4], strided: true }, { shape: [2, 3, 1] }, { shape: [2, 3, 5] }]);
  checkAgainstReference(cat(1), [{ shape: [2, 0, 4] }, { shape: [2, 3, 4] }]);
  checkAgainstReference(cat(0), [{ shape: [4], dtype: 'bf16' }, { shape: [3], dtype: 'bf16' }]);
  const ints = [1, -2, 2147483647, -2147483648, 5, 6];
  checkAgainstReference(cat(0), [{ shape: [2, 3], dtype: 'int32', data: ints }, { shape: [2, 3], dtype: 'int32', data: ints, strided: true }], {
    atol: 0,
    rtol: 0,
  });
});

test('concat gradients are slices of the output gradient', () => {
  gradcheck((a, b, c) => concat([a, b, c], 1), [{ shape: [2, 3] }, { shape: [2, 1], strided: true }, { shape: [2, 4] }]);
  gradcheck((a, b) => concat([a, b], 0), [{ shape: [1, 3] }, { shape: [2, 3], noGrad: true }]);
});

test('stack joins along a new axis', () => {
  const st = (axis: number) => (...xs: Tensor[]) => stack(xs, axis);
  for (const axis of [0, 1, 2, -1]) checkAgainstReference(st(axis), [{ shape: [2, 3] }, { shape: [2, 3], strided: true }]);
  gradcheck(st(1), [{ shape: [2, 3] }, { shape: [2, 3] }, { shape: [2, 3], strided: true }]);
  scope(() => {
    const s = stack([tensor([1, 2], [2]), tensor([3, 4], [2])], 1);
    assert.deepEqual(s.shape, [2, 2]);
    assertClose(s.toArray(), [1, 3, 2, 4], { atol: 0, rtol: 0 });
  });
});

test('indexSelect gathers along any axis, with ids as an int32 tensor or an array', () => {
  const ids = [4, 0, 2, 2, 3, 4];
  for (const axis of [0, 1, -1]) {
    checkAgainstReference((x) => indexSelect(x, axis, ids), [{ shape: [5, 5] }]);
    checkAgainstReference((x) => indexSelect(x, axis, ids), [{ shape: [5, 5], strided: true }]);
  }
  checkAgainstReference((x) => indexSelect(x, 1, [2, 0]), [{ shape: [2, 3, 4], strided: true }]);
  checkAgainstReference((x, i) => indexSelect(x, 0, i), [{ shape: [6, 3] }, { shape: [4], dtype: 'int32', data: [5, 5, 1, 0], noGrad: true }]);
  checkAgainstReference((x) => indexSelect(x, 0, [1, 1]), [{ shape: [3, 2], dtype: 'int32', data: [7, -8, 9, 10, 11, 12] }], { atol: 0, rtol: 0 });
  scope(() => {
    const x = tensor([10, 11, 12, 13], [2, 2]);
    const y = indexSelect(x, 1, tensor([1, 1, 0], [3], { dtype: 'int32' }));
    assert.deepEqual(y.shape, [2, 3]);
    assertClose(y.toArray(), [11, 11, 10, 13, 13, 12], { atol: 0, rtol: 0 });
    assert.deepEqual(indexSelect(x, 0, []).shape, [0, 2]);
    // ids given as a strided int32 view: every other entry of [1, 9, 0, 9]
    const strided = slice(tensor([1, 9, 0, 9], [4], { dtype: 'int32' }), 0, 0, 4, 2);
    assert.equal(strided.isContiguous(), false);
    assertClose(indexSelect(x, 0, strided).toArray(), [12, 13, 10, 11], { atol: 0, rtol: 0 });
  });
});

test('indexSelect gradients accumulate over repeated ids', () => {
  gradcheck((x) => indexSelect(x, 0, [2, 0, 2, 2, 1]), [{ shape: [4, 3] }]);
  gradcheck((x) => indexSelect(x, 1, [0, 1, 1, 3]), [{ shape: [2, 4, 3], strided: true }]);
  gradcheck((x) => indexSelect(x, 2, [1, 0]), [{ shape: [2, 3, 2] }]);
  scope(() => {
    const x = tensor([1, 2, 3], [3], { requiresGrad: true });
    backward(mul(indexSelect(x, 0, [2, 2, 0, 2]), 1), tensor([1, 10, 100, 1000], [4]));
    assertClose(values(x.grad!), [100, 0, 1011], { atol: 0, rtol: 0 });
  });
});

test('concat, stack and indexSelect reject bad input with the op name', () => {
  scope(() => {
    const a = tensor([1, 2, 3, 4], [2, 2]);
    assert.throws(() => concat([a, tensor([1, 2, 3], [1, 3])], 0), /concat: shapes \[2, 2\], \[1, 3\] differ outside axis 0/);
    assert.throws(() => concat([a, tensor([1, 2], [1, 2], { dtype: 'bf16' })], 0), /concat: dtypes differ \(f32 and bf16\)/);
    assert.throws(() => concat([], 0), /concat: no tensors/);
    assert.throws(() => stack([a, tensor([1, 2], [2])]), /stack: shapes/);
    assert.throws(() => indexSelect(a, 0, [2]), /indexSelect: id 2 is out of range for axis 0 of \[2, 2\]/);
    assert.throws(() => indexSelect(a, 0, [-1]), /indexSelect: id -1 is out of range/);
    assert.throws(() => indexSelect(a, 0, tensor([0], [1])), /indexSelect: ids must be int32, got f32/);
    assert.throws(() => indexSelect(a, 2, [0]), /indexSelect: axis 2 is out of range for rank 2/);
  });
});
