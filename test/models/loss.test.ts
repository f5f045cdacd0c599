// causalLmLoss against a direct f64 computation of transformers' shifted loss (slice
// the last position's logits off, score the rest against labels[:, 1:], mean over the
// labels that are not ignored) and its gradient against finite differences, with the
// logits contiguous or strided.
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { causalLmLoss } from '../../src/models/loss.js';
import { tensor } from '../../src/ops/creation.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, gradcheck, randomData, testBackends } from '../helpers.js';

const B = 2, T = 5, V = 7;
const LABELS = [3, 1, -100, 6, 0, /* row 1 */ 2, 2, 5, -100, -100];

/** The loss and d loss / d logits by the definition, in f64. */
function expected(logits: ArrayLike<number>, labels: readonly number[]): { loss: number; grad: Float64Array } {
  const grad = new Float64Array(B * T * V);
  let total = 0, count = 0;
  const scored: [number, number][] = [];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T - 1; t++) {
      const y = labels[b * T + t + 1];
      if (y === -100) continue;
      const row = (b * T + t) * V;
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, logits[row + v]);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(logits[row + v] - m);
      total += m + Math.log(s) - logits[row + y];
      count++;
      scored.push([row, y]);
    }
  }
  for (const [row, y] of scored) {
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, logits[row + v]);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[row + v] - m);
    for (let v = 0; v < V; v++) grad[row + v] = (Math.exp(logits[row + v] - m) / s - (v === y ? 1 : 0)) / count;
  }
  return { loss: total / count, grad };
}

test('causalLmLoss: shifted mean over labels that are not ignored, and its gradient', () => {
  const data = randomData(B * T * V, 5, -3, 3);
  const want = expected(data, LABELS);
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const logits = tensor(data, [B, T, V], { device, requiresGrad: true });
      const labels = tensor(LABELS, [B, T], { dtype: 'int32', device });
      const loss = causalLmLoss(logits, labels);
      assertClose([loss.item()], [want.loss], { atol: 1e-6, rtol: 1e-6 }, `${device} loss`);
      backward(loss);
      assertClose(logits.grad!.toArray(), want.grad, { atol: 1e-7, rtol: 1e-5 }, `${device} dlogits`);
    });
  }
});

test('causalLmLoss: gradient by finite differences, contiguous and strided logits', () => {
  const labels = (device: string) => tensor(LABELS, [B, T], { dtype: 'int32', device });
  for (const strided of [false, true]) {
    // The labels go where the logits are: the reference, cpu, or FINLORA_DEVICE's backend.
    gradcheck((x) => causalLmLoss(x, labels(x.backend.name)), [{ shape: [B, T, V], strided }]);
  }
});
