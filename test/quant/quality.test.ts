// Memory and quality of quantized base weights: storage per parameter (scales and
// tables included, and what the backend actually holds), the error of each dequantized
// weight against the bound its format guarantees, and the deviation of a quantized
// Linear's outputs (and input gradients) from the f32 layer on random data.
//
// The bounds, for a weight of N(0, σ²) values:
//   int8  each value is rounded to a step of absmax/127 of its row (after rounding to
//         f16, relative error ≤ 2^-11), so |Ŵ − W| ≤ absmax/254 + |W|·2^-11; for
//         y = x·Wᵀ, |ŷ − y| ≤ Σ_k |x_k|·(that bound) plus f32 accumulation error. With
//         uniform rounding errors the output's relative RMS error is
//         (absmax/127)/(√12·σ); over 2048 inputs absmax ≈ 3.6σ, so ≈ 0.0082.
//   NF4   a value s·a (|s| ≤ 1, a the block absmax) becomes code[q]·â with |code[q] − s|
//         at most half NF4's widest gap (0.1519, between -1 and -0.696) and â the
//         double-quantized absmax,
//         |â − a| ≤ half the dynamic map's widest gap (0.00703) times the nested absmax;
//         so |Ŵ − W| ≤ 0.1519·a + |â − a|. Most of a Gaussian block's mass falls where the
//         NF4 gaps are 0.08–0.12 of a ≈ 2.4σ (64 values), an RMS step error near
//         0.1·2.4σ/√12 ≈ 0.07σ: relative output RMS error ≈ 0.07–0.1.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { defaultBackend } from '../../src/backend/registry.js';
import { tensor } from '../../src/ops/creation.js';
import { linear } from '../../src/ops/matmul.js';
import { blockScalesHost, dynamicMap, NF4_CODE } from '../../src/quant/nf4.js';
import { dequantize, quantizedLinear } from '../../src/quant/ops.js';
import { type QuantizedWeight, quantizeInt8, quantizeNf4 } from '../../src/quant/weight.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';

const OUT = 512, IN = 2048, TOKENS = 16, SIGMA = 0.02;

function normal(n: number, seed: number, std: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.normal() * std);
}

const W = normal(OUT * IN, 1, SIGMA);
const X = normal(TOKENS * IN, 2, 1);
const DY = normal(TOKENS * OUT, 3, 1);

function host(t: Tensor): Float32Array {
  return Float32Array.from(t.toArray());
}

function rms(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s / a.length);
}

function maxGap(code: ArrayLike<number>): number {
  let g = 0;
  for (let i = 1; i < code.length; i++) g = Math.max(g, code[i] - code[i - 1]);
  return g;
}

/** y = x·Wᵀ and dx = dy·W for the f32 weight and a quantized one, on the default device. */
function outputs(q: QuantizedWeight): { y: Float32Array; yq: Float32Array; dx: Float32Array; dxq: Float32Array } {
  return scope(() => {
    const w = tensor(W, [OUT, IN]);
    const run = (f: (x: Tensor) => Tensor) => {
      const x = tensor(X, [TOKENS, IN], { requiresGrad: true });
      const y = f(x);
      backward(y, tensor(DY, [TOKENS, OUT]));
      const r = { y: host(y), dx: host(x.grad!) };
      x.grad!.dispose();
      return r;
    };
    const a = run((x) => linear(x, w));
    const b = run((x) => quantizedLinear(x, q));
    return { y: a.y, yq: b.y, dx: a.dx, dxq: b.dx };
  });
}

function relRms(a: Float32Array, b: Float32Array): number {
  return rms(a.map((v, i) => v - b[i])) / rms(b);
}

/** Checks |ŷ − y| ≤ Σ_k |x_k|·bound[r, k] + accumulation slack for every output. */
function checkOutputBound(y: Float32Array, yq: Float32Array, bound: Float32Array, what: string): void {
  for (let i = 0; i < TOKENS; i++) {
    for (let r = 0; r < OUT; r++) {
      let b = 0, mag = 0;
      for (let k = 0; k < IN; k++) {
        const ax = Math.abs(X[i * IN + k]);
        b += ax * bound[r * IN + k];
        mag += ax * Math.abs(W[r * IN + k]);
      }
      const slack = 2 * IN * 2 ** -24 * mag; // two f32 accumulations over IN terms
      const err = Math.abs(yq[i * OUT + r] - y[i * OUT + r]);
      assert.ok(err <= b + slack, `${what}: output [${i}, ${r}] is off by ${err}, bound ${b + slack}`);
    }
  }
}

test('int8: about 1 byte per parameter, weight error within absmax/254, outputs within their bound', (t) => {
  // the backend tensor() creates on (the default device), whose bytes the weights take
  const device = defaultBackend();
  const before = device.liveBytes();
  const q = scope(() => quantizeInt8(tensor(W, [OUT, IN])));
  try {
    assert.equal(device.liveBytes() - before, q.bytes, 'the backend holds exactly the int8 weight and its scales');
    t.diagnostic(`int8: ${q.bytesPerParameter.toFixed(4)} bytes per parameter (${q.bytes} bytes for ${q.parameters} values)`);
    assert.ok(q.bytesPerParameter >= 1 && q.bytesPerParameter <= 1.01, `${q.bytesPerParameter} bytes per parameter`);

    const dq = scope(() => host(dequantize(q)));
    const scb = host(q.scb);
    const bound = new Float32Array(OUT * IN);
    for (let i = 0; i < W.length; i++) {
      bound[i] = scb[Math.floor(i / IN)] / 254 + Math.abs(W[i]) * 2 ** -11 + 1e-9;
      assert.ok(Math.abs(dq[i] - W[i]) <= bound[i], `weight ${i}: error ${Math.abs(dq[i] - W[i])} > ${bound[i]}`);
    }
    const { y, yq, dx, dxq } = outputs(q);
    checkOutputBound(y, yq, bound, 'int8');
    const ey = relRms(yq, y), edx = relRms(dxq, dx);
    t.diagnostic(`int8: relative RMS error of outputs ${ey.toExponential(2)}, of input gradients ${edx.toExponential(2)}; max |Δy| / rms(y) ${(Math.max(...yq.map((v, i) => Math.abs(v - y[i]))) / rms(y)).toExponential(2)}`);
    // ≈ 0.0082 expected (header); 1.5x margin
    assert.ok(ey < 0.012 && ey > 0.004, `int8 output error ${ey}`);
    assert.ok(edx < 0.012, `int8 input-gradient error ${edx}`);
  } finally {
    q.dispose();
  }
});

test('nf4 with double quantization: about 0.52 bytes per parameter (0.56 without), error within its bound, outputs within theirs', (t) => {
  // the backend tensor() creates on (the default device), whose bytes the weights take
  const device = defaultBackend();
  const before = device.liveBytes();
  const q = scope(() => quantizeNf4(tensor(W, [OUT, IN])));
  const plain = scope(() => quantizeNf4(tensor(W, [OUT, IN]), { doubleQuant: false }));
  try {
    assert.equal(device.liveBytes() - before, q.bytes + plain.bytes, 'the backend holds exactly the two NF4 weights');
    t.diagnostic(`nf4 + double quantization: ${q.bytesPerParameter.toFixed(4)} bytes per parameter; without: ${plain.bytesPerParameter.toFixed(4)}`);
    assert.ok(q.bytesPerParameter >= 0.5 && q.bytesPerParameter <= 0.55, `${q.bytesPerParameter} bytes per parameter`);
    assert.ok(plain.bytesPerParameter > 0.56 && plain.bytesPerParameter < 0.57, `${plain.bytesPerParameter} bytes per parameter without double quantization`);

    const dq = scope(() => host(dequantize(q)));
    const nested = q.nested!;
    const scales = blockScalesHost({ absmax: Uint8Array.from(q.absmax.toArray()), nested: { absmax: host(nested.absmax), code: host(nested.code), blocksize: nested.blocksize, offset: nested.offset } });
    const halfNf4 = maxGap(NF4_CODE) / 2, halfDyn = maxGap(dynamicMap()) / 2;
    assert.ok(Math.abs(halfNf4 - 0.1519) < 1e-4 && Math.abs(halfDyn - 0.00703) < 1e-5, `${halfNf4} ${halfDyn}`);
    const absmax2 = host(nested.absmax);
    const bound = new Float32Array(OUT * IN);
    for (let b = 0; b < scales.length; b++) {
      let a = 0;
      for (let i = b * 64; i < (b + 1) * 64; i++) a = Math.max(a, Math.abs(W[i]));
      const da = Math.abs(scales[b] - a);
      assert.ok(da <= halfDyn * absmax2[Math.floor(b / 256)] * (1 + 1e-5) + 1e-9, `block ${b}: absmax off by ${da}`);
      for (let i = b * 64; i < (b + 1) * 64; i++) {
        bound[i] = halfNf4 * a + da + 1e-9;
        assert.ok(Math.abs(dq[i] - W[i]) <= bound[i], `weight ${i}: error ${Math.abs(dq[i] - W[i])} > ${bound[i]}`);
      }
    }
    const { y, yq, dx, dxq } = outputs(q);
    checkOutputBound(y, yq, bound, 'nf4');
    const ey = relRms(yq, y), edx = relRms(dxq, dx);
    const eplain = relRms(outputs(plain).yq, y);
    t.diagnostic(`nf4: relative RMS error of outputs ${ey.toExponential(2)} (${eplain.toExponential(2)} without double quantization), of input gradients ${edx.toExponential(2)}`);
    // 0.07–0.1 expected (header)
    assert.ok(ey < 0.12 && ey > 0.04, `nf4 output error ${ey}`);
    assert.ok(edx < 0.12, `nf4 input-gradient error ${edx}`);
    assert.ok(Math.abs(ey - eplain) < 0.1 * eplain, 'double quantization barely changes the error');
  } finally {
    q.dispose();
    plain.dispose();
  }
});
