// recomputable(): a value computed while a checkpointed forward records is kept and handed
// back, without computing it again, while that forward is replayed; elsewhere it is
// computed every time. The memo frees what it kept.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RecomputeMemo, recomputable, withRecomputeMemo } from '../../src/autograd/recompute.js';
import { tensor } from '../../src/ops/creation.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';

test('recomputable: recorded once, replayed without computing, computed as usual outside a memo', () => {
  const key = {}, other = {};
  let calls = 0;
  const compute = (): Tensor => {
    calls++;
    return tensor([calls], [1]);
  };
  assert.equal(scope(() => recomputable(key, compute).item()), 1);
  assert.equal(scope(() => recomputable(key, compute).item()), 2, 'no memo: computed again');
  const memo = new RecomputeMemo();
  // The recorded value outlives the forward's scope.
  const recorded = scope(() => withRecomputeMemo(memo, false, () => recomputable(key, compute)));
  scope(() => withRecomputeMemo(memo, false, () => recomputable(key, compute)));
  assert.equal(calls, 4);
  const replayed = scope(() => withRecomputeMemo(memo, true, () => recomputable(key, compute)));
  assert.equal(replayed, recorded, 'the first recorded value, not recomputed');
  assert.equal(calls, 4);
  assert.equal(replayed.item(), 3);
  // A key the forward did not record is computed during the replay.
  assert.equal(scope(() => withRecomputeMemo(memo, true, () => recomputable(other, compute).item())), 5);
  memo.dispose();
  assert.ok(recorded.isDisposed, 'the memo frees what it kept');
});
