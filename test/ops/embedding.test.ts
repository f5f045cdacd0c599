import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { tensor } from '../../src/ops/creation.js';
import { embedding } from '../../src/ops/embedding.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, testBackends, values } from '../helpers.js';
import { withThreads } from './nn_helpers.js';

const lookup = (ids: Tensor, w: Tensor) => embedding(ids, w);

test('embedding: matches the reference on odd shapes, strided ids and bf16/f16 tables', () => {
  checkAgainstReference(lookup, [{ shape: [7], data: [0, 4, 2, 4, 6, 1, 0], dtype: 'int32' }, { shape: [7, 5] }]);
  // 2-D ids (a batch of sequences), stored transposed
  checkAgainstReference(lookup, [{ shape: [3, 4], data: [3, 1, 0, 2, 2, 2, 4, 1, 0, 3, 3, 4], dtype: 'int32', strided: true }, { shape: [5, 33] }]);
  // a strided table
  checkAgainstReference(lookup, [{ shape: [2, 3], data: [1, 0, 8, 8, 2, 5], dtype: 'int32' }, { shape: [9, 17], strided: true }]);
  for (const dtype of ['bf16', 'f16'] as const) {
    checkAgainstReference(lookup, [{ shape: [4], data: [2, 0, 2, 1], dtype: 'int32' }, { shape: [3, 70], dtype }], { atol: 0, rtol: 0 });
  }
});

test('embedding: output is f32 [..., D] and rows are picked by id', () => {
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const w = tensor([0, 1, 10, 11, 20, 21], [3, 2], { device, dtype: 'bf16' });
      const out = embedding(tensor([2, 0, 2, 1], [2, 2], { device, dtype: 'int32' }), w);
      assert.deepEqual(out.shape, [2, 2, 2]);
      assert.equal(out.dtype, 'f32');
      assertClose(values(out), [20, 21, 0, 1, 20, 21, 10, 11], { atol: 0, rtol: 0 }, device);
    });
  }
});

test('embedding: gradient scatter-adds into the table; repeated ids accumulate', () => {
  gradcheck(lookup, [{ shape: [6], data: [1, 3, 1, 1, 0, 3], dtype: 'int32', noGrad: true }, { shape: [5, 4] }]);
  gradcheck(lookup, [{ shape: [2, 3], data: [2, 2, 0, 1, 2, 0], dtype: 'int32', noGrad: true, strided: true }, { shape: [3, 7], strided: true }]);
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const w = tensor(new Float32Array(6), [3, 2], { device, requiresGrad: true });
      const out = embedding(tensor([2, 2, 0, 2], [4], { device, dtype: 'int32' }), w);
      backward(out, tensor([1, 2, 3, 4, 5, 6, 7, 8], [4, 2], { device }));
      assertClose(values(w.grad!), [5, 6, 0, 0, 1 + 3 + 7, 2 + 4 + 8], { atol: 0, rtol: 0 }, device);
    });
  }
});

test('embedding: the kernel backward (scatter-add) matches the reference on a large table', () => {
  const ids = Array.from({ length: 300 }, (_, i) => (i * 37) % 91);
  // 5 threads over 3 column blocks of 64 and a ragged last one
  withThreads(5, () => checkAgainstReference(
    (idt: Tensor, w: Tensor, g: Tensor) => {
      w.requiresGrad = true;
      backward(embedding(idt, w), g);
      return w.grad!;
    },
    [{ shape: [300], data: ids, dtype: 'int32' }, { shape: [91, 200] }, { shape: [300, 200] }],
  ));
});

test('embedding: ids out of range and bad inputs give clear errors', () => {
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const w = tensor(new Float32Array(8), [4, 2], { device, requiresGrad: true });
      assert.throws(() => embedding(tensor([1, 4], [2], { device, dtype: 'int32' }), w), /embedding id 4 at position 1 is out of range for a table of 4 rows/);
      assert.throws(() => embedding(tensor([-1], [1], { device, dtype: 'int32' }), w), /embedding id -1 at position 0 is out of range/);
      assert.throws(() => embedding(tensor([1], [1], { device }), w), /embedding: ids must be int32, got f32/);
      assert.throws(() => embedding(tensor([1], [1], { device, dtype: 'int32' }), tensor([1, 2], [2], { device })), /embedding: weight must be \[num_embeddings, embedding_dim\], got \[2\]/);
    });
  }
});
