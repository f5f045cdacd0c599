// causalLmLossAt (logits computed only at the positions a label scores) against
// causalLmLoss on the full [B, T, V] logits of a tiny Llama: the same loss and the same
// gradient for every parameter, with prompt tokens ignored, a row with nothing scored,
// and a batch in which every label is ignored.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { causalLmLoss, causalLmLossAt, scoredPositions } from '../../src/models/loss.js';
import { tensor } from '../../src/ops/creation.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose } from '../helpers.js';
import { tinyLlama, VOCAB } from '../train/tiny.js';

const B = 3, T = 9;
const I = -100;

function ids(seed: number): Int32Array {
  return Int32Array.from({ length: B * T }, (_, i) => (Math.imul(i + seed, 0x9e3779b1) >>> 8) % VOCAB);
}

/** Loss and every parameter's gradient, from the full logits or from the scored rows only. */
function lossAndGrads(labels: readonly number[], scoredOnly: boolean): { loss: number; grads: Float32Array[] } {
  const model = tinyLlama(11);
  try {
    for (const p of model.parameters()) p.requiresGrad = true;
    const loss = scope(() => {
      const x = tensor(ids(3), [B, T], { dtype: 'int32', device: model.backend });
      const l: Tensor = scoredOnly
        ? causalLmLossAt((rows) => model.forward(x, { rows }), labels, B, T)
        : causalLmLoss(model.forward(x), tensor(labels, [B, T], { dtype: 'int32', device: model.backend }));
      backward(l);
      return l.item();
    });
    const grads = model.parameters().map((p) => Float32Array.from(p.grad?.toArray() ?? new Float32Array(p.size)));
    return { loss, grads };
  } finally {
    model.dispose();
  }
}

function compare(labels: readonly number[], what: string): void {
  const full = lossAndGrads(labels, false);
  const rows = lossAndGrads(labels, true);
  assertClose([rows.loss], [full.loss], { atol: 1e-6, rtol: 1e-6 }, `${what}: loss`);
  assert.equal(rows.grads.length, full.grads.length);
  // A GPU sums the rows' products in an order that depends on how many rows there are, so an
  // entry formed by cancellation can move by a few ulps of the largest entry: atol follows the scale.
  rows.grads.forEach((g, i) => {
    const scale = full.grads[i].reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assertClose(g, full.grads[i], { atol: 1e-7 + 1e-6 * scale, rtol: 1e-5 }, `${what}: gradient of parameter ${i}`);
  });
}

test('scoredPositions: the positions whose next label counts, and those labels', () => {
  const labels = [5, I, 7, 8, /* row 1 */ 1, 2, I, I];
  const { rows, targets } = scoredPositions(labels, 2, 4);
  assert.deepEqual(rows, [1, 2, 4]);
  assert.deepEqual(Array.from(targets), [7, 8, 2]);
  assert.throws(() => scoredPositions(labels, 3, 4), /scoredPositions: 8 labels for a \[3, 4\] batch/);
});

test('causalLmLossAt: same loss and gradients as the full logits, prompt ignored', () => {
  const labels = [
    ...[1, I, I, I, I, 40, 41, 42, 43], // prompt then target
    ...[I, I, I, I, I, I, I, I, I], // nothing scored in this row
    ...[2, 3, I, 5, 6, I, 8, 9, I], // scattered
  ];
  const full = lossAndGrads(labels, false);
  assert.ok(full.loss > 0 && full.grads.some((g) => g.some((v) => v !== 0)), 'the full computation trains');
  compare(labels, 'mixed batch');
});

test('causalLmLossAt: a batch in which every label is ignored gives the full computation\'s loss and gradients', () => {
  const labels = Array.from({ length: B * T }, (_, i) => (i % T === 0 ? 1 : I));
  compare(labels, 'all ignored');
});

test('causalLmLossAt: names a model that ignores rows', () => {
  const model = tinyLlama(11);
  try {
    scope(() => {
      const x = tensor(ids(3), [B, T], { dtype: 'int32', device: model.backend });
      const labels = Array.from({ length: B * T }, () => 4);
      assert.throws(() => causalLmLossAt(() => model.forward(x), labels, B, T), /causalLmLossAt: logits for 24 positions \[24, V\] expected, got \[3, 9, 258\]/);
    });
  } finally {
    model.dispose();
  }
});
