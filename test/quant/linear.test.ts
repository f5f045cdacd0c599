// A Linear holding a quantized weight (Linear.setQuantizedWeight, quantizeModel): its
// forward and gradients go through the quantized op, the dense weight's memory is
// freed, the frozen weight an adapter sees; then a whole Llama fixture quantized in 8
// and 4 bits against the unquantized model on the same tokens (logit deviation, loss
// change, memory), with bounds.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward, noGrad } from '../../src/autograd/tape.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { causalLmLoss } from '../../src/models/loss.js';
import { Linear } from '../../src/nn/linear.js';
import { tensor } from '../../src/ops/creation.js';
import { linear } from '../../src/ops/matmul.js';
import { contiguous } from '../../src/ops/view.js';
import { frozenWeightOfQuantized, quantizedFrozenWeight, quantizeModel } from '../../src/quant/model.js';
import { dequantize, quantizedLinear } from '../../src/quant/ops.js';
import { quantizeInt8, quantizeNf4 } from '../../src/quant/weight.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, randomData, values } from '../helpers.js';

const FIXTURE = new URL('../../../test/fixtures/models/llama3_gqa/', import.meta.url).pathname;

function normal(n: number, seed: number, std: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.normal() * std);
}

test('a Linear holding a quantized weight forwards through quantizedLinear, frees its dense weight and trains only x and bias', () => {
  const layer = new Linear(tensor(normal(10 * 70, 1, 0.05), [10, 70]), tensor(randomData(10, 2), [10], { requiresGrad: true }));
  try {
    const x = tensor(randomData(3 * 70, 3), [3, 70]);
    const dense = noGrad(() => values(layer.forward(x)));
    // the bytes of the backend the layer lives on (the default device)
    const device = layer.weight.backend;
    const before = device.liveBytes();
    const q = quantizeInt8(layer.weight);
    layer.setQuantizedWeight(q);
    // the dense 10 x 70 f32 weight is gone; its placeholder holds one value
    assert.equal(device.liveBytes() - before, q.bytes - 10 * 70 * 4 + 4);
    assert.equal(layer.quantized, q);
    assert.deepEqual(layer.weight.shape, [10, 70]);
    assert.equal(layer.inFeatures, 70);
    assert.equal(layer.outFeatures, 10);
    assert.ok(Number.isNaN(scope(() => contiguous(layer.weight).toArray()[0])), 'the placeholder reads as NaN');
    assert.deepEqual([...layer.namedParameters()].map(([n]) => n), ['weight', 'bias']);
    assert.ok(layer.requiredOps().includes('quantizedMatmul'));

    scope(() => {
      const y = layer.forward(x);
      assert.deepEqual(values(y), values(quantizedLinear(x, q, layer.bias)));
      assertClose(values(y), dense, { atol: 0.01, rtol: 0.01 }, 'close to the dense layer');
      const xg = tensor(randomData(3 * 70, 3), [3, 70], { requiresGrad: true });
      backward(layer.forward(xg), tensor(randomData(30, 4), [3, 10]));
      assert.ok(xg.grad !== null && layer.bias!.grad !== null);
      assertClose(values(xg.grad), values(linear(tensor(randomData(30, 4), [3, 10]), contiguous(transposeOf(dequantize(q))))), { atol: 1e-5, rtol: 1e-5 }, 'dx = dy·W');
      xg.grad.dispose();
    });
    assert.throws(() => layer.setQuantizedWeight(scope(() => quantizeInt8(tensor(new Float32Array(8), [2, 4])))), /does not match weight \[10, 70\]/);
  } finally {
    layer.dispose();
  }
  assert.ok(layer.quantized!.cb.isDisposed, 'dispose frees the quantized weight');
});

function transposeOf(w: Tensor): Tensor {
  const [r, c] = w.shape;
  const v = w.toArray();
  return tensor(Float32Array.from({ length: r * c }, (_, i) => v[(i % r) * c + Math.floor(i / r)]), [c, r]);
}

test('the frozen weight an adapter sees: products through the quantized kernel, W dequantized inside withDense only', () => {
  const q = scope(() => quantizeNf4(tensor(normal(12 * 64, 5, 0.05), [12, 64])));
  const layer = new Linear(tensor(new Float32Array(12 * 64), [12, 64]));
  try {
    layer.setQuantizedWeight(q);
    const frozen = frozenWeightOfQuantized('q_proj', layer)!;
    assert.equal(frozen.outFeatures, 12);
    assert.equal(frozen.inFeatures, 64);
    assert.equal(frozenWeightOfQuantized('q_proj', new Linear(tensor(new Float32Array(4), [2, 2]))), undefined);
    scope(() => {
      const x = tensor(randomData(5 * 64, 6), [5, 64]);
      const w = dequantize(q);
      assertClose(values(frozen.apply(x)), values(linear(x, w)), { atol: 1e-6, rtol: 1e-6 });
      const device = x.backend;
      const before = device.liveBytes();
      const inside: Tensor[] = [];
      const norm = frozen.withDense((d) => {
        inside.push(d);
        assert.deepEqual(values(d), values(w));
        return tensor([values(d).reduce((s, v) => s + v * v, 0)], [1]);
      });
      assert.ok(inside.length === 1 && inside[0].isDisposed, 'the dense copy is freed after withDense');
      assert.equal(device.liveBytes() - before, 4, 'only the returned tensor remains');
      assert.ok(norm.item() > 0);
    });
    assert.equal(quantizedFrozenWeight(q).quantized, q);
  } finally {
    layer.dispose();
  }
});

// ------------------------------------------------------------ a whole model

const IDS = [
  [1, 17, 250, 3, 99, 42, 7, 128, 64, 5, 200, 33, 12, 9, 77, 150],
  [1, 8, 8, 120, 240, 15, 16, 31, 2, 90, 91, 92, 180, 44, 0, 6],
];

function logitsAndLoss(model: LlamaForCausalLM): { logits: Float32Array; loss: number } {
  return noGrad(() =>
    scope(() => {
      const ids = tensor(IDS.flat(), [2, 16], { dtype: 'int32' });
      const logits = model.forward(ids);
      return { logits: Float32Array.from(logits.toArray()), loss: causalLmLoss(logits, ids).item() };
    }),
  );
}

function rms(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s / a.length);
}

test('a Llama fixture quantized in 8 and 4 bits: every projection quantized, lm_head kept, logits and loss near the f32 model', (t) => {
  const base = LlamaForCausalLM.fromPretrained(FIXTURE);
  const ref = logitsAndLoss(base);
  base.dispose();
  // Measured relative RMS logit errors are recorded in the diagnostics; the bounds are
  // the per-layer output errors of quality.test.ts (int8 ≈ 0.008, NF4 ≈ 0.09) grown
  // through 2 layers of 7 projections, whose errors add in quadrature along the
  // residual stream: about √7 ≈ 2.6 times one projection's, bounded at 4 times.
  for (const [format, bound, lossBound] of [['int8', 0.035, 0.01], ['nf4', 0.35, 0.1]] as const) {
    const model = LlamaForCausalLM.fromPretrained(FIXTURE);
    try {
      const denseBytes = [...model.namedParameters()].reduce((s, [, p]) => s + p.size * 4, 0);
      const device = model.backend;
      const before = device.liveBytes();
      const report = quantizeModel(model, format);
      assert.equal(report.quantized.length, 2 * 7, 'q, k, v, o, gate, up, down in each of 2 layers');
      assert.ok(!report.quantized.includes('lm_head'));
      assert.equal(model.lm_head!.quantized, null);
      const perParam = report.bytes / report.parameters;
      // what the backend released: the dense projections, less their quantized form and placeholders
      const released = before - device.liveBytes();
      assert.equal(released, report.parameters * 4 - report.bytes - report.quantized.length * 4);
      const got = logitsAndLoss(model);
      const diff = got.logits.map((v, i) => v - ref.logits[i]);
      const rel = rms(diff) / rms(ref.logits);
      const maxAbs = Math.max(...diff.map(Math.abs));
      t.diagnostic(
        `${format}: ${perParam.toFixed(3)} bytes per quantized parameter (model ${denseBytes} f32 bytes, ${released} released); ` +
          `logits relative RMS error ${rel.toExponential(2)}, max |Δlogit| ${maxAbs.toExponential(2)} (logit RMS ${rms(ref.logits).toExponential(2)}); ` +
          `loss ${ref.loss.toFixed(5)} -> ${got.loss.toFixed(5)}`,
      );
      assert.ok(rel < bound, `${format}: logits relative RMS error ${rel} >= ${bound}`);
      assert.ok(Math.abs(got.loss - ref.loss) < lossBound * ref.loss, `${format}: loss ${ref.loss} -> ${got.loss}`);
    } finally {
      model.dispose();
    }
  }
});
