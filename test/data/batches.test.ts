// Validation split, per-epoch shuffling that resumes exactly, and right-padded batches.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { collate, EpochBatcher, sequentialBatches, splitValidation } from '../../src/data/batches.js';
import { type Features, IGNORE_INDEX } from '../../src/data/format.js';

function feat(len: number, line: number): Features {
  const inputIds = Int32Array.from({ length: len }, (_, i) => 10 + line * 100 + i);
  const labels = Int32Array.from({ length: len }, (_, i) => (i < 2 ? IGNORE_INDEX : inputIds[i]));
  return { inputIds, labels, line };
}

test('splitValidation: a fraction rounds up, a count is exact, seeded and disjoint', () => {
  const a = splitValidation(100, 0.02, 42);
  assert.equal(a.val.length, 2);
  assert.equal(a.train.length, 98);
  assert.deepEqual(splitValidation(100, 0.02, 42), a);
  assert.notDeepEqual(splitValidation(100, 0.02, 43).val, a.val);
  assert.equal(splitValidation(10, 0.01, 1).val.length, 1);
  const c = splitValidation(50, 7, 3);
  assert.equal(c.val.length, 7);
  assert.deepEqual([...c.train, ...c.val].sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual(splitValidation(5, 0, 1), { train: [0, 1, 2, 3, 4], val: [] });
  assert.throws(() => splitValidation(5, 5, 1), /val_set_size 5 leaves no training examples out of 5/);
});

test('collate right-pads with the pad id and -100 labels; counts tokens and scored targets', () => {
  const b = collate([feat(3, 0), feat(5, 1)], 0);
  assert.equal(b.rows, 2);
  assert.equal(b.length, 5);
  assert.deepEqual([...b.inputIds.slice(0, 5)], [10, 11, 12, 0, 0]);
  assert.deepEqual([...b.labels.slice(0, 5)], [IGNORE_INDEX, IGNORE_INDEX, 12, IGNORE_INDEX, IGNORE_INDEX]);
  assert.equal(b.tokens, 8);
  assert.equal(b.targets, 1 + 3);
});

test('EpochBatcher: every example once per epoch, a new order each epoch, no batch dropped', () => {
  const ex = Array.from({ length: 10 }, (_, i) => feat(2 + (i % 3), i));
  const b = new EpochBatcher(ex, 4, 0, 7);
  assert.equal(b.batchesPerEpoch, 3);
  const epoch = () => {
    const seen: number[] = [];
    while (!b.epochDone) {
      const batch = b.next();
      for (let r = 0; r < batch.rows; r++) seen.push(Math.floor((batch.inputIds[r * batch.length] - 10) / 100));
    }
    return seen;
  };
  const e1 = epoch();
  assert.deepEqual([...e1].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  b.nextEpoch();
  const e2 = epoch();
  assert.deepEqual([...e2].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.notDeepEqual(e2, e1);
});

test('EpochBatcher resumes from a saved position with the same batches', () => {
  const ex = Array.from({ length: 9 }, (_, i) => feat(3, i));
  const run = (stopAt: number | null) => {
    let b = new EpochBatcher(ex, 2, 0, 11);
    const out: number[][] = [];
    for (let k = 0; k < 12; k++) {
      if (k === stopAt) b = new EpochBatcher(ex, 2, 0, 11, JSON.parse(JSON.stringify(b.position())));
      if (b.epochDone) b.nextEpoch();
      out.push([...b.next().inputIds]);
    }
    return out;
  };
  const straight = run(null);
  for (const stop of [1, 4, 5, 6, 10]) assert.deepEqual(run(stop), straight, `resumed at batch ${stop}`);
});

test('sequentialBatches keeps file order', () => {
  const ex = [feat(2, 0), feat(3, 1), feat(4, 2)];
  const bs = sequentialBatches(ex, 2, 0);
  assert.deepEqual(bs.map((b) => [b.rows, b.length]), [[2, 3], [1, 4]]);
});
