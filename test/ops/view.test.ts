import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tensor } from '../../src/ops/creation.js';
import { clone, contiguous, expand, permute, reshape, slice, squeeze, sumTo, transpose, unsqueeze } from '../../src/ops/view.js';
import { linear } from '../../src/ops/matmul.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, values } from '../helpers.js';

const iota = (n: number) => Array.from({ length: n }, (_, i) => i);

test('reshape of a permuted view copies; of a sliced contiguous view it shares storage', () => {
  for (const device of ['reference', 'cpu']) {
    scope(() => {
      const x = tensor(iota(6), [2, 3], { device });
      const p = permute(x, [1, 0]);
      const flat = reshape(p, [6]);
      assert.notEqual(flat.storage, x.storage, 'a permuted view cannot be flattened in place');
      assert.deepEqual(Array.from(values(flat)), [0, 3, 1, 4, 2, 5]);

      const y = tensor(iota(24), [4, 6], { device });
      const rows = slice(y, 0, 1, 3);
      assert.equal(rows.isContiguous(), true);
      const r = reshape(rows, [3, 4]);
      assert.equal(r.storage, y.storage);
      assert.equal(r.offset, 6);
      assert.deepEqual(Array.from(values(r)), iota(12).map((i) => i + 6));

      // a column slice is not contiguous, but its leading axes still merge without a copy
      const z = tensor(iota(72), [4, 3, 6], { device });
      const cols = slice(z, 2, 0, 4);
      const merged = reshape(cols, [12, 4]);
      assert.equal(merged.storage, z.storage);
      assert.deepEqual(merged.strides, [6, 1]);
      // splitting the sliced axis itself must copy
      const split = reshape(cols, [4, 3, 2, 2]);
      assert.equal(split.storage, z.storage, 'splitting 4 into 2x2 within a row is still a view');
      const across = reshape(slice(z, 2, 1, 5), [4, 12]);
      assert.notEqual(across.storage, z.storage, 'merging sliced rows needs a copy');
      assert.deepEqual(Array.from(values(across)).slice(0, 8), [1, 2, 3, 4, 7, 8, 9, 10]);
    });
  }
});

test('reshape infers -1 and rejects sizes that do not fit', () => {
  scope(() => {
    const x = tensor(iota(12), [3, 4]);
    assert.deepEqual(reshape(x, [2, -1]).shape, [2, 6]);
    assert.deepEqual(reshape(x, [-1]).shape, [12]);
    assert.throws(() => reshape(x, [5, -1]), /reshape: cannot reshape \[3, 4\] to \[5, -1\]/);
    assert.throws(() => reshape(x, [-1, -1]), /reshape: more than one -1/);
    assert.throws(() => reshape(x, [7]), /reshape: cannot reshape \[3, 4\] \(12 elements\) to \[7\]/);
  });
});

test('view ops match the reference on strided inputs', () => {
  const s = (shape: number[]) => ({ shape, strided: true });
  checkAgainstReference((x) => permute(x, [2, 0, 1]), [s([2, 3, 5])]);
  checkAgainstReference((x) => transpose(x), [s([2, 3, 5])]);
  checkAgainstReference((x) => transpose(x, 0, -1), [{ shape: [2, 3, 5] }]);
  checkAgainstReference((x) => slice(x, 1, 1, 5, 2), [s([3, 7])]);
  checkAgainstReference((x) => slice(x, -1, -4), [s([3, 7])]);
  checkAgainstReference((x) => slice(x, 0, 0, 100, 3), [{ shape: [8, 2] }]);
  checkAgainstReference((x) => expand(x, [4, 3, 5]), [{ shape: [3, 1] }]);
  checkAgainstReference((x) => expand(x, [2, 3, 4]), [s([3, 4])]);
  checkAgainstReference((x) => unsqueeze(x, -1), [s([3, 4])]);
  checkAgainstReference((x) => squeeze(x, 1), [{ shape: [3, 1, 4] }]);
  checkAgainstReference((x) => reshape(x, [4, 3]), [s([3, 4])]);
  checkAgainstReference((x) => contiguous(permute(x, [1, 0, 2])), [s([2, 3, 4])]);
  checkAgainstReference((x) => clone(x), [s([5, 2])]);
});

test('slice with a step and negative bounds picks the right elements and shares storage', () => {
  scope(() => {
    const x = tensor(iota(10), [10]);
    const s = slice(x, 0, 1, 9, 3);
    assert.equal(s.storage, x.storage);
    assert.deepEqual(s.strides, [3]);
    assert.deepEqual(Array.from(values(s)), [1, 4, 7]);
    assert.deepEqual(Array.from(values(slice(x, 0, -3))), [7, 8, 9]);
    assert.deepEqual(Array.from(values(slice(x, 0, 8, 3))), []);
    assert.deepEqual(Array.from(values(slice(x, 0, -100, 2))), [0, 1]);
    assert.throws(() => slice(x, 0, 0, 5, 0), /slice: step must be a positive integer/);
  });
});

test('expand, squeeze, unsqueeze and permute give views with the expected strides', () => {
  scope(() => {
    const x = tensor(iota(3), [3, 1]);
    const e = expand(x, [2, 3, 4]);
    assert.equal(e.storage, x.storage);
    assert.deepEqual(e.strides, [0, 1, 0]);
    assert.deepEqual(Array.from(values(e)).slice(0, 8), [0, 0, 0, 0, 1, 1, 1, 1]);
    assert.throws(() => expand(x, [3, 2, 2]), /expand: cannot expand \[3, 1\] to \[3, 2, 2\]/);
    assert.throws(() => expand(x, [1]), /expand: cannot expand/);
    const u = unsqueeze(x, 0);
    assert.deepEqual(u.shape, [1, 3, 1]);
    assert.equal(u.storage, x.storage);
    assert.deepEqual(squeeze(x, -1).shape, [3]);
    assert.throws(() => squeeze(x, 0), /squeeze: axis 0 of \[3, 1\] is not 1/);
    const p = permute(tensor(iota(24), [2, 3, 4]), [2, 0, 1]);
    assert.deepEqual(p.shape, [4, 2, 3]);
    assert.deepEqual(p.strides, [1, 12, 4]);
    assert.throws(() => permute(p, [0, 0, 1]), /permute: repeated axis/);
    assert.throws(() => permute(p, [0, 1]), /permute: 2 axes for a tensor of rank 3/);
  });
});

test('contiguous returns the tensor itself when it already is contiguous; clone always copies', () => {
  scope(() => {
    const x = tensor(iota(6), [2, 3]);
    assert.equal(contiguous(x), x);
    const c = clone(x);
    assert.notEqual(c.storage, x.storage);
    assertClose(c.toArray(), iota(6), { atol: 0, rtol: 0 });
  });
});

test('gradients flow through views', () => {
  gradcheck((x) => permute(x, [2, 0, 1]), [{ shape: [2, 3, 4] }]);
  gradcheck((x) => transpose(x), [{ shape: [3, 4], strided: true }]);
  gradcheck((x) => slice(x, 1, 1, 6, 2), [{ shape: [3, 7] }]);
  gradcheck((x) => slice(transpose(x), 0, 1), [{ shape: [3, 4], strided: true }]);
  gradcheck((x) => expand(x, [2, 3, 4]), [{ shape: [3, 1] }]);
  gradcheck((x) => reshape(permute(x, [1, 0]), [2, 6]), [{ shape: [3, 4] }]);
  gradcheck((x) => reshape(x, [-1]), [{ shape: [3, 4], strided: true }]);
  gradcheck((x) => squeeze(unsqueeze(x, 1), 1), [{ shape: [2, 3] }]);
  gradcheck((x) => contiguous(slice(x, 0, 0, 4, 2)), [{ shape: [4, 3], strided: true }]);
  gradcheck((x: Tensor) => clone(x), [{ shape: [2, 5] }]);
});

test('sumTo drops leading axes of size 1 (a weight gradient from a batch of one)', () => {
  const g = tensor(iota(6), [1, 2, 3]);
  const r = sumTo(g, [2, 3]);
  assert.deepEqual(r.shape, [2, 3]);
  assertClose(r.toArray(), iota(6), { atol: 0, rtol: 0 });
  gradcheck((x, w) => linear(x, w), [{ shape: [1, 4, 3] }, { shape: [2, 3] }]);
});
