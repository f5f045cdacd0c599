import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { tensor } from '../../src/ops/creation.js';
import { crossEntropy, type CrossEntropyReduction } from '../../src/ops/crossentropy.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData, testBackends, values } from '../helpers.js';
import { forEachIsa } from './isa_levels.js';

const ce = (reduction: CrossEntropyReduction, ignoreIndex?: number) => (logits: Tensor, targets: Tensor) =>
  crossEntropy(logits, targets, { reduction, ignoreIndex });

const targetsFor = (n: number, V: number, ignoreEvery = 4) =>
  Array.from({ length: n }, (_, i) => (i % ignoreEvery === 1 ? -100 : (i * 7919) % V));

/** Host cross-entropy in f64, per row. */
function hostLosses(logits: ArrayLike<number>, targets: number[], V: number): number[] {
  return targets.map((t, r) => {
    if (t === -100) return 0;
    const row = Array.from({ length: V }, (_, c) => logits[r * V + c]);
    const m = Math.max(...row);
    return m + Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0)) - row[t];
  });
}

test('crossEntropy: per-row losses match the reference (odd V, strided and bf16 logits, 3-D), at every SIMD level', () => {
  forEachIsa(() => {
    checkAgainstReference(ce('none'), [{ shape: [7, 11] }, { shape: [7], data: targetsFor(7, 11), dtype: 'int32' }]);
    checkAgainstReference(ce('none'), [{ shape: [2, 3, 19], strided: true }, { shape: [2, 3], data: targetsFor(6, 19), dtype: 'int32' }]);
    checkAgainstReference(ce('none'), [{ shape: [5, 1003], dtype: 'bf16' }, { shape: [5], data: targetsFor(5, 1003), dtype: 'int32' }]);
    // large logits: the row maximum must be taken out before exp
    const big = Array.from(randomData(4 * 37, 2), (x) => x * 300);
    checkAgainstReference(ce('mean'), [{ shape: [4, 37], data: big }, { shape: [4], data: [3, 0, 36, 5], dtype: 'int32' }], { atol: 1e-4, rtol: 1e-5 });
  });
});

test('crossEntropy: mean is over targets that are not ignored; sum and none agree with it', () => {
  const V = 6, N = 5;
  const logits = randomData(N * V, 12, -3, 3);
  const targets = [2, -100, 5, 0, -100];
  const rows = hostLosses(logits, targets, V);
  const total = rows.reduce((a, b) => a + b, 0);
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const l = tensor(logits, [N, V], { device });
      const t = tensor(targets, [N], { device, dtype: 'int32' });
      assertClose(values(crossEntropy(l, t, { reduction: 'none' })), rows, { atol: 1e-5, rtol: 1e-5 }, device);
      assertClose(values(crossEntropy(l, t, { reduction: 'sum' })), [total], { atol: 1e-5, rtol: 1e-5 }, device);
      assertClose(values(crossEntropy(l, t)), [total / 3], { atol: 1e-5, rtol: 1e-5 }, device);
      // a custom ignore index
      const t2 = tensor([2, 1, 5, 0, 1], [N], { device, dtype: 'int32' });
      assertClose(values(crossEntropy(l, t2, { ignoreIndex: 1 })), [total / 3], { atol: 1e-5, rtol: 1e-5 }, device);
    });
  }
});

test('crossEntropy: mean with every target ignored is 0 with a zero gradient (PyTorch gives NaN)', () => {
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const l = tensor(randomData(12, 3), [3, 4], { device, requiresGrad: true });
      const loss = crossEntropy(l, tensor([-100, -100, -100], [3], { device, dtype: 'int32' }));
      assert.equal(loss.item(), 0);
      backward(loss);
      assert.deepEqual(Array.from(values(l.grad!)), new Array(12).fill(0));
    });
  }
});

test('crossEntropy: gradients match finite differences for every reduction', () => {
  const t = { shape: [4], data: [1, -100, 4, 0], dtype: 'int32' as const, noGrad: true };
  for (const r of ['mean', 'sum', 'none'] as const) gradcheck(ce(r), [{ shape: [4, 5] }, t]);
  gradcheck(ce('mean'), [{ shape: [2, 3, 6], strided: true }, { shape: [2, 3], data: [5, 0, 2, 2, -100, 3], dtype: 'int32', noGrad: true }]);
});

test('crossEntropy: the fused backward kernel matches the reference, up to a Llama-3 vocabulary', () => {
  forEachIsa(() => {
    checkAgainstReference(
      (l: Tensor, t: Tensor, g: Tensor) => {
        l.requiresGrad = true;
        backward(crossEntropy(l, t, { reduction: 'none' }), g);
        return l.grad!;
      },
      [{ shape: [9, 3001] }, { shape: [9], data: targetsFor(9, 3001), dtype: 'int32' }, { shape: [9] }],
      { atol: 1e-6, rtol: 1e-4 },
    );
  });
  // 128256 classes, as Llama 3's vocabulary
  const V = 128256;
  checkAgainstReference(
    (l: Tensor, t: Tensor) => {
      l.requiresGrad = true;
      const loss = crossEntropy(l, t);
      backward(loss);
      return [loss, l.grad!];
    },
    [{ shape: [2, V], data: randomData(2 * V, 5, -8, 8) }, { shape: [2], data: [128000, 17], dtype: 'int32' }],
    { atol: 1e-7, rtol: 1e-4 },
  );
});

test('crossEntropy: out-of-range targets and bad shapes give clear errors', () => {
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const l = tensor(randomData(6, 1), [2, 3], { device });
      assert.throws(() => crossEntropy(l, tensor([0, 3], [2], { device, dtype: 'int32' })), /crossEntropy: target 3 at row 1 is out of range for 3 classes \(ignore_index -100\)/);
      assert.throws(() => crossEntropy(l, tensor([-1, 0], [2], { device, dtype: 'int32' })), /target -1 at row 0 is out of range/);
    });
  }
  scope(() => {
    const l = tensor(randomData(6, 1), [2, 3]);
    assert.throws(() => crossEntropy(l, tensor([0, 1, 2], [3], { dtype: 'int32' })), /crossEntropy: targets \[3\] must match logits \[2, 3\] without its last axis/);
    assert.throws(() => crossEntropy(l, tensor([0, 1], [2])), /crossEntropy: targets must be int32, got f32/);
  });
});

test('crossEntropy: a NaN or +inf logit, or a row of -inf, gives a NaN loss and gradient row at every SIMD level', () => {
  // 37 classes: a full vector at every width plus a tail; the special value sits in a full vector and in the tail
  const V = 37;
  const rows = [
    { at: 3, value: NaN },
    { at: 35, value: NaN },
    { at: 20, value: Infinity },
    { at: -1, value: -Infinity },
  ];
  forEachIsa((isa) => {
    for (const device of ['reference', ...testBackends()]) {
      scope(() => {
        const data = Array.from(randomData(rows.length * V, 8), (x) => x * 3);
        rows.forEach(({ at, value }, r) => {
          if (at < 0) data.fill(value, r * V, (r + 1) * V);
          else data[r * V + at] = value;
        });
        const l = tensor(data, [rows.length, V], { device, requiresGrad: true });
        const loss = crossEntropy(l, tensor([1, 2, 3, 4], [rows.length], { device, dtype: 'int32' }), { reduction: 'none' });
        assert.ok(Array.from(values(loss)).every(Number.isNaN), `${device} ${isa}: losses ${Array.from(values(loss))}`);
        backward(loss, tensor([1, 1, 1, 1], [rows.length], { device }));
        assert.ok(Array.from(values(l.grad!)).every(Number.isNaN), `${device} ${isa}: gradient rows are NaN`);
      });
    }
  });
});
