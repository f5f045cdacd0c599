// DoRA's pieces on small layers: the weight norm by the low-rank identity against the
// direct form and an f64 truth (random, long rows, bf16 W, and rows built to cancel so
// that the identity alone would be wrong), the layer's gradients against central finite
// differences on the reference backend with the norm held constant (DoRA §4.3),
// PEFT's initialisation, both dropout semantics, the eval-mode norm cache, and a
// quantized base (the norm from the dequantized W).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { directRowNorms, doraCombine, doraCombinePeft, DoraVariant, doraWeightNorm, lowRankNormSquared, NORM_FALLBACK_RATIO, weightNormSquared } from '../../src/adapters/lora/dora.js';
import { AdapterWeight, denseFrozenWeight, LoraLayer, type LoraLayerOptions } from '../../src/adapters/lora/layer.js';
import { backward, noGrad } from '../../src/autograd/tape.js';
import { add, mul } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { dropout, DropoutGenerator } from '../../src/ops/dropout.js';
import { assign } from '../../src/ops/inplace.js';
import { linear } from '../../src/ops/matmul.js';
import { sum } from '../../src/ops/reduce.js';
import { Linear } from '../../src/nn/linear.js';
import { dequantize, quantizedLinear } from '../../src/quant/ops.js';
import { quantizeInt8 } from '../../src/quant/weight.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { defaultBackend } from '../../src/backend/registry.js';
import { assertClose, gradcheck, randomData, testBackends, values } from '../helpers.js';

/** Where tensors go by default (FINLORA_DEVICE, else cpu): the layers under test live there too. */
const DEVICE = defaultBackend().name;
/** The f64 reference and every backend under test. */
const DEVICES = ['reference', ...testBackends()];

/** ‖W_i + s·B_i·A‖ per row in f64 on the host (W row-major [out, inF]). */
function truthNorms(W: ArrayLike<number>, A: ArrayLike<number>, B: ArrayLike<number>, out: number, inF: number, r: number, s: number): Float64Array {
  const n = new Float64Array(out);
  for (let i = 0; i < out; i++) {
    let acc = 0;
    for (let k = 0; k < inF; k++) {
      let ba = 0;
      for (let j = 0; j < r; j++) ba += B[i * r + j] * A[j * inF + k];
      const v = W[i * inF + k] + s * ba;
      acc += v * v;
    }
    n[i] = Math.sqrt(acc);
  }
  return n;
}

function normal(n: number, seed: number, std: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.normal() * std);
}

function relErrors(a: ArrayLike<number>, b: ArrayLike<number>): number[] {
  return Array.from(a, (v, i) => Math.abs(v - b[i]) / Math.abs(b[i]));
}

interface Case {
  readonly W: Float32Array;
  readonly A: Float32Array;
  readonly B: Float32Array;
  readonly out: number;
  readonly inF: number;
  readonly r: number;
  readonly s: number;
}

function randomCase(out: number, inF: number, r: number, s: number, seed: number): Case {
  return { W: normal(out * inF, seed, 1 / Math.sqrt(inF)), A: randomData(r * inF, seed + 1, -1 / Math.sqrt(inF), 1 / Math.sqrt(inF)), B: normal(out * r, seed + 2, 0.1), out, inF, r, s };
}

function norms(c: Case, device: string, wDtype: 'f32' | 'bf16' = 'f32') {
  return scope(() => {
    const w = tensor(c.W, [c.out, c.inF], { device, dtype: wDtype });
    const A = tensor(c.A, [c.r, c.inF], { device });
    const B = tensor(c.B, [c.out, c.r], { device });
    const frozen = denseFrozenWeight(new Linear(w));
    const wsq = weightNormSquared(frozen);
    const identity = lowRankNormSquared(frozen, wsq, A, B, c.s);
    const dn = doraWeightNorm(frozen, wsq, A, B, c.s);
    return {
      identity: Array.from(values(identity.n2), Math.sqrt),
      scale: Array.from(values(identity.scale)),
      norm: values(dn.norm),
      fallbackRows: dn.fallbackRows,
      direct: values(directRowNorms(frozen, A, B, c.s)),
    };
  });
}

test('the low-rank identity gives ‖W + s·B·A‖ per row: odd shapes, every backend, bf16 W', () => {
  const c = randomCase(37, 53, 5, 2.3, 1);
  for (const device of DEVICES) {
    for (const dtype of ['f32', 'bf16'] as const) {
      const W = dtype === 'f32' ? c.W : c.W.map((v) => roundTo('bf16', v));
      const truth = truthNorms(W, c.A, c.B, c.out, c.inF, c.r, c.s);
      const got = norms({ ...c, W }, device, dtype);
      assert.deepEqual(got.fallbackRows, [], `${device} ${dtype}: no row should need the direct form`);
      assertClose(got.norm, truth, { atol: 0, rtol: 2e-6 }, `${device} ${dtype} identity`);
      assertClose(got.direct, truth, { atol: 0, rtol: 2e-6 }, `${device} ${dtype} direct`);
    }
  }
});

test('the identity stays within 1e-6 of the truth over 4096-long rows (f32 products)', () => {
  const c = randomCase(48, 4096, 8, 2, 2);
  const truth = truthNorms(c.W, c.A, c.B, c.out, c.inF, c.r, c.s);
  for (const device of testBackends()) {
    const got = norms(c, device);
    assert.deepEqual(got.fallbackRows, [], device);
    assertClose(got.norm, truth, { atol: 0, rtol: 1e-6 }, `${device}: identity, in = 4096`);
    assertClose(got.direct, truth, { atol: 0, rtol: 1e-6 }, `${device}: direct form, in = 4096`);
  }
});

test('rows built to cancel (s·B·A ≈ −W) take the direct form; the identity alone would be wrong there', () => {
  const out = 24, inF = 64, r = 4, s = 2;
  const base = randomCase(out, inF, r, s, 3);
  const W = Float32Array.from(base.W);
  // Rows 0-3: W = −(1 − ε)·s·B·A + a little noise, so ‖W + s·B·A‖ is ~1e-3 of ‖W‖.
  // Rows 4-5: a partial cancellation just above the fallback ratio (still the identity).
  const cancel = [0, 1, 2, 3];
  const partial = [4, 5];
  const noise = normal(out * inF, 9, 1e-5);
  for (const i of [...cancel, ...partial]) {
    const keep = cancel.includes(i) ? 1e-3 : 0.75;
    for (let k = 0; k < inF; k++) {
      let ba = 0;
      for (let j = 0; j < r; j++) ba += base.B[i * r + j] * base.A[j * inF + k];
      W[i * inF + k] = -(1 - keep) * s * ba + (cancel.includes(i) ? noise[i * inF + k] : 0);
    }
  }
  const c = { ...base, W };
  const truth = truthNorms(W, c.A, c.B, out, inF, r, s);
  for (const device of DEVICES) {
    const got = norms(c, device);
    const n2Ratio = got.identity.map((v, i) => (v * v) / got.scale[i]);
    // The test case is what it says: the cancelling rows sit far below the ratio, the partial ones above it.
    for (const i of cancel) assert.ok(truth[i] ** 2 / got.scale[i] < 1e-4, `row ${i} cancels`);
    for (const i of partial) assert.ok(n2Ratio[i] > NORM_FALLBACK_RATIO, `row ${i} stays on the identity`);
    // In f32 the identity cancels catastrophically; the reference holds f64 and does not.
    if (device !== 'reference') {
      const rawErr = relErrors(cancel.map((i) => got.identity[i]), cancel.map((i) => truth[i]));
      assert.ok(Math.max(...rawErr) > 1e-3, `the identity alone loses precision on cancelling rows (worst ${Math.max(...rawErr)})`);
    }
    assert.deepEqual(got.fallbackRows, cancel, `${device}: rows taking the direct form`);
    // (f32 on both sides: the reference backend holds f64 values, the patched norm is f32)
    // cpu's GEMM gives a row the same bits whatever rows come with it; cuBLAS may take
    // another kernel (another summation order) for the few fallback rows, so there the
    // patched rows need only be far nearer the direct form than the identity (1e-3 off).
    for (const i of cancel) {
      if (device === 'reference' || device === 'cpu') assert.equal(Math.fround(got.norm[i]), Math.fround(got.direct[i]), `${device}: row ${i} is the direct form`);
      else assertClose([got.norm[i]], [got.direct[i]], { atol: 0, rtol: 1e-4 }, `${device}: row ${i} is the direct form`);
    }
    assertClose(got.norm, truth, { atol: 0, rtol: 2e-4 }, `${device}: norms with the fallback`);
    assertClose(partial.map((i) => got.norm[i]), partial.map((i) => truth[i]), { atol: 0, rtol: 5e-6 }, `${device}: partial cancellation`);
  }
});

// ------------------------------------------------------------------ gradients

const OUT = 5, IN = 7, R = 3, S = 1.7;
const W = randomData(OUT * IN, 21, -0.5, 0.5);
const BIAS = randomData(OUT, 22, -0.2, 0.2);
/** A fixed, positive stand-in for ‖W + s·B·A‖ (the norm is a constant in backward). */
const NFIXED = randomData(OUT, 23, 0.8, 1.4);

test('doraCombine and doraCombinePeft: gradients of base, lora, m (and wx̃) by finite differences', () => {
  gradcheck((base, lora, m, n, b) => doraCombine(base, lora, m, n, S, b), [
    { shape: [2, 3, OUT] },
    { shape: [2, 3, OUT] },
    { shape: [OUT] },
    { shape: [OUT], data: NFIXED, noGrad: true },
    { shape: [OUT], noGrad: true },
  ]);
  gradcheck((base, wxd, lora, m, n) => doraCombinePeft(base, wxd, lora, m, n, S), [
    { shape: [4, OUT] },
    { shape: [4, OUT], strided: true },
    { shape: [4, OUT] },
    { shape: [OUT] },
    { shape: [OUT], data: NFIXED, noGrad: true },
  ]);
});

/** The DoRA layer as a composition of ops, with the norm given. */
function doraComposed(x: Tensor, A: Tensor, B: Tensor, m: Tensor, w: Tensor, b: Tensor, n: Tensor): Tensor {
  return doraCombine(linear(x, w, b), linear(linear(x, A), B), m, n, S, b);
}

test('DoRA layer: x, lora_A, lora_B and magnitude gradients by finite differences, norm held constant', () => {
  gradcheck(
    (x, A, B, m, w, b, n) => doraComposed(x, A, B, m, w, b, n),
    [
      { shape: [2, 3, IN] },
      { shape: [R, IN] },
      { shape: [OUT, R] },
      { shape: [OUT], data: randomData(OUT, 24, 0.5, 1.5) },
      { shape: [OUT, IN], data: W, noGrad: true },
      { shape: [OUT], data: BIAS, noGrad: true },
      { shape: [OUT], data: NFIXED, noGrad: true },
    ],
  );
  // LoRA: y = W·x + b + s·B·A·x
  gradcheck((x, A, B, w, b) => add(linear(x, w, b), mul(linear(linear(x, A), B), S)), [
    { shape: [4, IN] },
    { shape: [R, IN] },
    { shape: [OUT, R] },
    { shape: [OUT, IN], data: W, noGrad: true },
    { shape: [OUT], data: BIAS, noGrad: true },
  ]);
});

function layerOn(device: string, opts: Partial<LoraLayerOptions> = {}, seed = 5): { layer: LoraLayer; target: Linear } {
  const target = new Linear(tensor(W, [OUT, IN], { device }), tensor(BIAS, [OUT], { device }));
  const layer = new LoraLayer('proj', target, {
    hyper: { r: R, lora_alpha: S * R, scaling: S },
    lora_dropout: 0,
    dropoutSemantics: 'finlora',
    rng: new Rng(seed),
    dropout: null,
    variant: (l) => new DoraVariant(l),
    ...opts,
  });
  return { layer, target };
}

function setAdapter(layer: LoraLayer, seed: number): void {
  noGrad(() => {
    assign(layer.lora_B.weight, tensor(randomData(OUT * R, seed, -0.5, 0.5), [OUT, R], { device: layer.lora_B.weight.backend }));
    const m = layer.variant?.modules.get('lora_magnitude_vector');
    if (m !== undefined) assign(m.weight, tensor(randomData(OUT, seed + 1, 0.5, 1.5), [OUT], { device: m.weight.backend }));
  });
  layer.invalidate();
}

test("the DoRA layer's forward and gradients are the composition's with n = ‖W + s·B·A‖ (reference and every test backend)", () => {
  for (const device of DEVICES) {
    const { layer, target } = layerOn(device);
    setAdapter(layer, 31);
    const m = layer.variant!.modules.get('lora_magnitude_vector')!.weight;
    const xData = randomData(2 * 3 * IN, 32);
    const wout = randomData(2 * 3 * OUT, 33);
    const run = (fn: (x: Tensor) => Tensor) =>
      scope(() => {
        for (const t of [layer.lora_A.weight, layer.lora_B.weight, m]) {
          t.grad?.dispose();
          t.grad = null;
        }
        const x = tensor(xData, [2, 3, IN], { device, requiresGrad: true });
        const y = fn(x);
        backward(sum(mul(y, tensor(wout, y.shape, { device }))));
        return [values(y), values(x.grad!), values(layer.lora_A.weight.grad!), values(layer.lora_B.weight.grad!), values(m.grad!)];
      });
    const got = run((x) => target.forward(x));
    const n = scope(() => tensor(truthNorms(W, values(layer.lora_A.weight), values(layer.lora_B.weight), OUT, IN, R, S), [OUT], { device }));
    const want = run((x) => doraComposed(x, layer.lora_A.weight, layer.lora_B.weight, m, target.weight, target.bias!, n));
    n.dispose();
    const what = ['y', 'dx', 'dA', 'dB', 'dm'];
    got.forEach((g, i) => assertClose(g, want[i], { atol: 1e-6, rtol: 1e-5 }, `${device} ${what[i]}`));
    layer.unload();
    target.dispose();
  }
});

// ------------------------------------------------------------------ initialisation

test("PEFT's initialisation: A in ±1/√in, B = 0, m = ‖W‖, and the adapted layer equals the base exactly", () => {
  for (const dora of [true, false]) {
    const { layer, target } = layerOn(DEVICE, dora ? {} : { variant: null });
    const A = values(layer.lora_A.weight);
    const bound = 1 / Math.sqrt(IN);
    assert.ok(A.every((v) => Math.abs(v) <= bound) && A.some((v) => Math.abs(v) > bound / 2), 'A ~ U(±1/√in)');
    assert.ok(values(layer.lora_B.weight).every((v) => v === 0), 'B = 0');
    if (dora) {
      const m = values(layer.variant!.modules.get('lora_magnitude_vector')!.weight);
      assertClose(m, truthNorms(W, A, new Float32Array(OUT * R), OUT, IN, R, S), { atol: 0, rtol: 1e-6 }, 'm = ‖W‖');
    }
    const x = tensor(randomData(4 * IN, 41), [4, IN]);
    const adapted = noGrad(() => values(target.forward(x)));
    const base = noGrad(() => values(linear(x, target.weight, target.bias)));
    assert.deepEqual(adapted, base, `${dora ? 'DoRA' : 'LoRA'} at step 0`);
    for (const t of [layer.lora_A.weight, layer.lora_B.weight, ...(dora ? [layer.variant!.modules.get('lora_magnitude_vector')!.weight] : [])]) {
      assert.equal(t.requiresGrad, true);
    }
    assert.equal(target.weight.requiresGrad, false, 'the base stays frozen');
    const names = [...target.namedParameters()].map(([n]) => n);
    assert.deepEqual(names, ['weight', 'bias', 'lora_A.weight', 'lora_B.weight', ...(dora ? ['lora_magnitude_vector.weight'] : [])]);
    layer.unload();
    assert.deepEqual([...target.namedParameters()].map(([n]) => n), ['weight', 'bias'], 'unload takes the adapter off');
    assert.deepEqual(noGrad(() => values(target.forward(x))), base);
    target.dispose();
  }
  const a1 = values(layerOn(DEVICE, {}, 7).layer.lora_A.weight);
  const a2 = values(layerOn(DEVICE, {}, 7).layer.lora_A.weight);
  const a3 = values(layerOn(DEVICE, {}, 8).layer.lora_A.weight);
  assert.deepEqual(a1, a2, 'same seed, same A');
  assert.notDeepEqual(a1, a3, 'another seed, another A');
});

// ------------------------------------------------------------------ dropout

test('dropout: finlora and PEFT semantics follow their formulas while training and agree in eval mode', () => {
  const p = 0.3, seed = 77;
  const xData = randomData(6 * IN, 51);
  const outputs = new Map<string, Float64Array>();
  for (const semantics of ['finlora', 'peft'] as const) {
    for (const training of [true, false]) {
      const { layer, target } = layerOn(DEVICE, { lora_dropout: p, dropout: new DropoutGenerator(seed), dropoutSemantics: semantics });
      setAdapter(layer, 52);
      target.train(training);
      const m = layer.variant!.modules.get('lora_magnitude_vector')!.weight;
      const [got, want] = scope(() => {
        const x = tensor(xData, [6, IN]);
        const y = values(target.forward(x));
        // The layer's generator starts at offset 0 and its first call takes x.size counters.
        const xd = training ? dropout(x, p, { seed, offset: 0 }) : x;
        const n = tensor(truthNorms(W, values(layer.lora_A.weight), values(layer.lora_B.weight), OUT, IN, R, S), [OUT]);
        const lora = linear(linear(xd, layer.lora_A.weight), layer.lora_B.weight);
        const base = linear(x, target.weight, target.bias);
        const expected = semantics === 'peft' && training ? doraCombinePeft(base, linear(xd, target.weight), lora, m, n, S) : doraCombine(base, lora, m, n, S, target.bias);
        return [y, values(expected)];
      });
      assertClose(got, want, { atol: 1e-6, rtol: 1e-5 }, `${semantics}, ${training ? 'training' : 'eval'}`);
      outputs.set(`${semantics}/${training}`, got);
      layer.unload();
      target.dispose();
    }
  }
  assert.deepEqual(outputs.get('finlora/false'), outputs.get('peft/false'), 'identical in eval mode');
  const a = outputs.get('finlora/true')!, b = outputs.get('peft/true')!;
  assert.ok(a.some((v, i) => Math.abs(v - b[i]) > 1e-3), 'the two training semantics differ (W·x vs W·x̃ in the DoRA term)');
  assert.ok(a.some((v, i) => Math.abs(v - outputs.get('finlora/false')![i]) > 1e-3), 'dropout acts while training');
  // Gradients through the PEFT form with a fixed mask, by finite differences.
  gradcheck(
    (x, A, B, m, w, b, n) => {
      const xd = dropout(x, p, { seed, offset: 0 });
      return doraCombinePeft(linear(x, w, b), linear(xd, w), linear(linear(xd, A), B), m, n, S);
    },
    [
      { shape: [3, IN] },
      { shape: [R, IN] },
      { shape: [OUT, R] },
      { shape: [OUT] },
      { shape: [OUT, IN], data: W, noGrad: true },
      { shape: [OUT], data: BIAS, noGrad: true },
      { shape: [OUT], data: NFIXED, noGrad: true },
    ],
  );
});

test('eval mode caches the norm; a training forward, invalidate() and merge recompute it', () => {
  const { layer, target } = layerOn(DEVICE);
  setAdapter(layer, 61);
  target.eval();
  const x = tensor(randomData(2 * IN, 62), [2, IN]);
  const y1 = noGrad(() => values(target.forward(x)));
  // Change B behind the layer's back: the cached norm is stale until invalidate().
  noGrad(() => assign(layer.lora_B.weight, mul(layer.lora_B.weight, 1.5)));
  layer.invalidate();
  const y2 = noGrad(() => values(target.forward(x)));
  const fresh = layerOn(DEVICE);
  noGrad(() => {
    assign(fresh.layer.lora_A.weight, layer.lora_A.weight);
    assign(fresh.layer.lora_B.weight, layer.lora_B.weight);
    assign(fresh.layer.variant!.modules.get('lora_magnitude_vector')!.weight, layer.variant!.modules.get('lora_magnitude_vector')!.weight);
  });
  fresh.layer.invalidate();
  fresh.target.eval();
  assert.deepEqual(y2, noGrad(() => values(fresh.target.forward(x))), 'after invalidate() the norm is recomputed');
  assert.notDeepEqual(y1, y2);
  layer.merge();
  const merged = noGrad(() => values(target.forward(x)));
  assertClose(merged, y2, { atol: 1e-5, rtol: 1e-5 }, 'merged forward');
  layer.unmerge();
  assertClose(noGrad(() => values(target.forward(x))), y2, { atol: 1e-5, rtol: 1e-5 }, 'unmerged forward');
  assert.ok(layer.variant !== null && (layer.variant as DoraVariant).lastFallbackRows.length === 0);
  assert.ok(layer.lora_A instanceof AdapterWeight);
});

const QUANT_OPS = ['quantizeInt8', 'quantizedMatmul', 'dequantize'] as const;
const quantMissing = QUANT_OPS.filter((op) => defaultBackend().kernels[op] === undefined);

test('a quantized base: the norm uses the dequantized W, the base output the quantized kernel; no merge into it', {
  skip: quantMissing.length > 0 ? `backend '${DEVICE}' has no ${quantMissing.join(', ')}` : false,
}, () => {
  const target = new Linear(tensor(W, [OUT, IN]), tensor(BIAS, [OUT]));
  target.setQuantizedWeight(quantizeInt8(target.weight));
  const q = target.quantized!;
  const wdq = scope(() => values(dequantize(q)));
  assert.ok(wdq.some((v, i) => v !== Math.fround(W[i])), 'int8 rounding changes W');
  const layer = new LoraLayer('proj', target, { hyper: { r: R, lora_alpha: S * R, scaling: S }, lora_dropout: 0, dropoutSemantics: 'finlora', rng: new Rng(5), dropout: null, variant: (l) => new DoraVariant(l) });
  const m = layer.variant!.modules.get('lora_magnitude_vector')!.weight;
  assertClose(values(m), truthNorms(wdq, values(layer.lora_A.weight), new Float32Array(OUT * R), OUT, IN, R, S), { atol: 0, rtol: 1e-6 }, 'm = ‖dequantized W‖');
  setAdapter(layer, 71);
  const [got, want] = noGrad(() =>
    scope(() => {
      const x = tensor(randomData(3 * IN, 72), [3, IN]);
      const n = tensor(truthNorms(wdq, values(layer.lora_A.weight), values(layer.lora_B.weight), OUT, IN, R, S), [OUT]);
      const expected = doraCombine(quantizedLinear(x, q, target.bias), linear(linear(x, layer.lora_A.weight), layer.lora_B.weight), m, n, S, target.bias);
      return [values(target.forward(x)), values(expected)];
    }),
  );
  assert.ok(got.every(Number.isFinite), 'the NaN placeholder weight is never read');
  assertClose(got, want, { atol: 1e-6, rtol: 1e-5 }, 'DoRA on an int8 base');
  assert.throws(() => layer.merge(), /proj: its base weight cannot be written \(quantized\?\)/);
  layer.unload();
  target.dispose();
});
