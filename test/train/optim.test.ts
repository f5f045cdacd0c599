// AdamW against a plain f64 transcription of torch.optim.AdamW's update, gradient
// clipping against torch.nn.utils.clip_grad_norm_'s rule, and the learning-rate
// schedules against transformers' formulas at hand-computed points.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../../src/backend/backend.js';
import { defaultBackend, getBackend } from '../../src/backend/registry.js';
import { tensor } from '../../src/ops/creation.js';
import { AdamW, clipCoefficient, clipGradNorm, gradNorm } from '../../src/train/adamw.js';
import { LrSchedule, lrLambda } from '../../src/train/schedule.js';
import { keep, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, randomData, testBackends } from '../helpers.js';

/** torch.optim.AdamW (single tensor, non-amsgrad, non-maximize), step by step in f64. */
function referenceAdamW(p: number[], grads: number[][], lrs: number[], b1: number, b2: number, eps: number, wd: number): number[] {
  const m = p.map(() => 0), v = p.map(() => 0);
  const x = [...p];
  grads.forEach((g, k) => {
    const t = k + 1;
    const lr = lrs[k];
    for (let i = 0; i < x.length; i++) {
      x[i] *= 1 - lr * wd;
      m[i] += (g[i] - m[i]) * (1 - b1);
      v[i] = v[i] * b2 + (1 - b2) * g[i] * g[i];
      const denom = Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** t) + eps;
      x[i] -= (lr / (1 - b1 ** t)) * (m[i] / denom);
    }
  });
  return x;
}

/** A trainable tensor, on the default device (FINLORA_DEVICE) unless told. */
function param(data: ArrayLike<number>, shape: number[], device: string | Backend = defaultBackend()): Tensor {
  return keep(tensor(data, shape, { requiresGrad: true, device }));
}

function setGrad(p: Tensor, g: ArrayLike<number>): void {
  p.grad?.dispose();
  p.grad = keep(tensor(g, p.shape, { device: p.backend }));
}

/** The cpu backend without its fused adamw kernel: AdamW then composes elementwise kernels. */
function withoutFusedAdamW(): Backend {
  const cpu = getBackend('cpu');
  return {
    name: 'cpu-without-adamw',
    kernels: { ...cpu.kernels, adamw: undefined },
    alloc: (bytes) => cpu.alloc(bytes),
    free: (buf) => cpu.free(buf),
    write: (buf, offset, data, dtype) => cpu.write(buf, offset, data, dtype),
    read: (buf, offset, bytes, dtype) => cpu.read(buf, offset, bytes, dtype),
    sync: () => cpu.sync(),
    liveBytes: () => cpu.liveBytes(),
  };
}

/** The cpu backend without its multi-tensor sumSquares kernel: gradNorm then squares and reduces each gradient. */
function withoutSumSquares(): Backend {
  const cpu = getBackend('cpu');
  return { ...withoutFusedAdamW(), name: 'cpu-without-sumSquares', kernels: { ...cpu.kernels, sumSquares: undefined } };
}

/** Runs AdamW for a few steps (weight decay, a changing lr, a gradient scale) on a device; returns the final values. */
function run(device: string | Backend, steps: number, scale: number): number[][] {
  const shapes = [[3, 5], [7], [1], [4099]];
  const init = shapes.map((s, i) => Array.from(randomData(s.reduce((a, b) => a * b, 1), 10 + i)));
  const params = shapes.map((s, i) => param(init[i], s, device));
  const opt = new AdamW(params, { lr: 1e-3, weightDecay: 0.1 });
  for (let k = 0; k < steps; k++) {
    params.forEach((p, i) => setGrad(p, randomData(init[i].length, 100 + 10 * i + k, -2, 2)));
    opt.lr = [0, 1e-3, 5e-3, 2e-3][k % 4];
    opt.step(scale);
  }
  const out = params.map((p) => [...p.toArray(), ...opt.stateOf(params.indexOf(p)).expAvg.toArray(), ...opt.stateOf(params.indexOf(p)).expAvgSq.toArray()]);
  opt.dispose();
  return out;
}

test('AdamW matches torch.optim.AdamW over several steps (weight decay, changing lr, odd sizes, a parameter without grad)', () => {
  const shapes = [[3, 5], [7], [1]];
  const init = shapes.map((s, i) => Array.from(randomData(s.reduce((a, b) => a * b, 1), 10 + i)));
  const params = shapes.map((s, i) => param(init[i], s));
  const frozenLike = param([1, 2], [2]);
  const opt = new AdamW([...params, frozenLike], { lr: 1e-3, weightDecay: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8 });
  const lrs = [0, 1e-3, 5e-3, 2e-3, 1e-3];
  const grads = shapes.map((_, i) => lrs.map((__, k) => Array.from(randomData(init[i].length, 100 + 10 * i + k, -2, 2))));
  lrs.forEach((lr, k) => {
    params.forEach((p, i) => setGrad(p, grads[i][k]));
    opt.lr = lr;
    opt.step();
  });
  params.forEach((p, i) => {
    const expected = referenceAdamW(init[i], grads[i], lrs, 0.9, 0.999, 1e-8, 0.1);
    assertClose(p.toArray(), expected, { atol: 1e-6, rtol: 1e-5 }, `param ${i}`);
  });
  assert.deepEqual([...frozenLike.toArray()], [1, 2], 'a parameter with no gradient is left alone');
  assert.equal(opt.stepCount, 5);
  // the first step moves each weight by about lr (Adam's bias correction), whatever |g|
  const q = param([0.5, -0.5], [2]);
  const o2 = new AdamW([q], { lr: 0.01, weightDecay: 0 });
  setGrad(q, [1e-3, -40]);
  o2.step();
  assertClose(q.toArray(), [0.49, -0.49], { atol: 1e-6, rtol: 0 });
  o2.dispose();
  opt.dispose();
});

test('the fused kernels (cpu and every test backend), the reference kernel and the composed elementwise update agree (gradient scale too)', () => {
  for (const scale of [1, 0.37]) {
    const ref = run('reference', 5, scale);
    const composed = run(withoutFusedAdamW(), 5, scale);
    ref.forEach((r, i) => assertClose(composed[i], r, { atol: 1e-6, rtol: 1e-5 }, `composed, tensor ${i}, scale ${scale}`));
    for (const device of testBackends()) {
      const fused = run(device, 5, scale);
      ref.forEach((r, i) => assertClose(fused[i], r, { atol: 1e-6, rtol: 1e-5 }, `${device} fused, tensor ${i}, scale ${scale}`));
    }
  }
});

test('AdamW state: zeros at first, exp_avg and exp_avg_sq after a step', () => {
  const p = param([1, 2, 3], [3]);
  const opt = new AdamW([p], { lr: 0.1, weightDecay: 0 });
  assert.deepEqual([...opt.stateOf(0).expAvg.toArray()], [0, 0, 0]);
  setGrad(p, [1, -2, 4]);
  opt.step();
  assertClose(opt.stateOf(0).expAvg.toArray(), [0.1, -0.2, 0.4], { atol: 1e-7, rtol: 0 });
  assertClose(opt.stateOf(0).expAvgSq.toArray(), [0.001, 0.004, 0.016], { atol: 1e-9, rtol: 1e-6 });
  opt.dispose();
});

test('clipGradNorm: global norm over all gradients, scaled by max_norm / (norm + 1e-6) only when above', () => {
  const a = param([0, 0], [2]), b = param([0], [1]), c = param([0], [1]);
  setGrad(a, [3, 0]);
  setGrad(b, [4]);
  assert.equal(clipGradNorm([a, b, c], 10), 5);
  assert.deepEqual([...a.grad!.toArray(), ...b.grad!.toArray()], [3, 0, 4], 'below the limit: untouched');
  const norm = clipGradNorm([a, b, c], 1);
  assert.equal(norm, 5);
  const k = 1 / (5 + 1e-6);
  assertClose([...a.grad!.toArray(), ...b.grad!.toArray()], [3 * k, 0, 4 * k], { atol: 1e-7, rtol: 1e-6 });
  assert.equal(clipGradNorm([a, b], 0) > 0, true, 'max_norm 0 reports the norm and clips nothing');
  assertClose([gradNorm([a, b, c])], [5 / (5 + 1e-6)], { atol: 0, rtol: 1e-6 });
  assert.equal(clipCoefficient(10, 1), 1 / (10 + 1e-6));
  assert.equal(clipCoefficient(0.5, 1), 1);
  assert.equal(clipCoefficient(10, 0), 1);
  assert.equal(clipCoefficient(Number.POSITIVE_INFINITY, 1), 1);
  setGrad(b, [Number.NaN]);
  assert.ok(Number.isNaN(clipGradNorm([a, b], 1)));
  assert.ok(Number.isNaN(b.grad!.toArray()[0]), 'a non-finite norm leaves gradients as they are');
});

test("schedules: transformers' cosine, linear and constant_with_warmup", () => {
  // warmup 10, 110 steps
  assert.equal(lrLambda('cosine', 0, 10, 110), 0);
  assert.equal(lrLambda('cosine', 5, 10, 110), 0.5);
  assert.equal(lrLambda('cosine', 10, 10, 110), 1);
  assertClose([lrLambda('cosine', 60, 10, 110)], [0.5], { atol: 1e-12, rtol: 0 });
  assertClose([lrLambda('cosine', 35, 10, 110)], [0.5 * (1 + Math.cos(Math.PI * 0.25))], { atol: 1e-12, rtol: 0 });
  assertClose([lrLambda('cosine', 110, 10, 110)], [0], { atol: 1e-12, rtol: 0 });
  assert.equal(lrLambda('linear', 60, 10, 110), 0.5);
  assert.equal(lrLambda('linear', 110, 10, 110), 0);
  assert.equal(lrLambda('linear', 200, 10, 110), 0);
  assert.equal(lrLambda('constant', 3, 10, 110), 0.3);
  assert.equal(lrLambda('constant', 50, 10, 110), 1);
  // no warmup: the first step runs at the full rate
  assert.equal(lrLambda('cosine', 0, 0, 4), 1);
  const s = new LrSchedule('cosine', 1e-4, 10, 110);
  assertClose([s.at(10), s.at(60)], [1e-4, 5e-5], { atol: 1e-15, rtol: 1e-12 });
});

test('gradNorm: the multi-tensor sumSquares kernel gives bit for bit the norm of square + reduce per gradient, and matches f64', () => {
  // Sizes around the reduce kernel's vector widths and its split of long rows into parts (n >= 2^17).
  const sizes = [1, 7, 16, 33, 1000, 4096 + 5, (1 << 17) + 3, 300_001];
  const data = sizes.map((n, i) => Float32Array.from(randomData(n, 40 + i), (v) => v * (i + 1)));
  const norms = [getBackend('cpu'), withoutSumSquares()].map((device) => {
    const ps = data.map((d) => param(new Float32Array(d.length), [d.length], device));
    ps.forEach((p, i) => setGrad(p, data[i]));
    const norm = gradNorm(ps);
    for (const p of ps) p.dispose();
    return norm;
  });
  assert.ok(getBackend('cpu').kernels.sumSquares !== undefined, 'the cpu backend has sumSquares');
  assert.equal(norms[0], norms[1]);
  let f64 = 0;
  for (const d of data) for (const v of d) f64 += v * v;
  assertClose([norms[0]], [Math.sqrt(f64)], { atol: 0, rtol: 1e-6 });
});
