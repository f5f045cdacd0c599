// doraScale under the bf16 compute contract, on the reference backend (which computes
// in bf16 the way a GPU backend does, rounding each stored value once): base bf16 makes
// the op compute in bf16, lora is cast to bf16 (its gradient returns in its own dtype),
// g and its gradient stay f32. Every value is checked against the f32 computation of
// the same inputs, rounded once to bf16 where the contract says the output is bf16; and
// the DoRA layer's combinations around it stay in bf16.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { doraCombine, doraCombinePeft } from '../../src/adapters/lora/dora.js';
import { backward } from '../../src/autograd/tape.js';
import { tensor } from '../../src/ops/creation.js';
import { doraScale, doraScaleDtype } from '../../src/ops/dora.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, randomData, values } from '../helpers.js';

const [ROWS, COLS] = [7, 45];
const S = 1.5;
const bf = (xs: ArrayLike<number>) => Float64Array.from(xs, (x) => roundTo('bf16', x));

for (const loraDtype of ['bf16', 'f32'] as const) {
  test(`doraScale in bf16 (base bf16, lora ${loraDtype}, g f32): values and gradients against the f32 computation`, () => {
    scope(() => {
      const device = 'reference';
      const baseData = bf(randomData(ROWS * COLS, 1)), loraData = randomData(ROWS * COLS, 2), gData = randomData(COLS, 3, 0.5, 1.5);
      const doutData = bf(randomData(ROWS * COLS, 4));
      const base = tensor(baseData, [ROWS, COLS], { device, dtype: 'bf16', requiresGrad: true });
      const lora = tensor(loraData, [ROWS, COLS], { device, dtype: loraDtype, requiresGrad: true });
      const g = tensor(gData, [COLS], { device, requiresGrad: true });
      assert.equal(doraScaleDtype(base), 'bf16');
      const y = doraScale(base, lora, g, S);
      assert.equal(y.dtype, 'bf16');
      backward(y, tensor(doutData, [ROWS, COLS], { device, dtype: 'bf16' }));
      assert.equal(base.grad!.dtype, 'bf16');
      assert.equal(lora.grad!.dtype, loraDtype);
      assert.equal(g.grad!.dtype, 'f32');

      // The f32 computation: lora as the op sees it (rounded to bf16), g exact.
      const l = bf(loraDtype === 'bf16' ? bf(loraData) : loraData);
      const pre = baseData.map((b, i) => b + S * l[i]);
      const expectY = bf(pre.map((p, i) => p * gData[i % COLS]));
      const dbase = bf(doutData.map((d, i) => d * gData[i % COLS]));
      const dlora = bf(doutData.map((d, i) => S * d * gData[i % COLS]));
      const dg = new Float64Array(COLS);
      doutData.forEach((d, i) => (dg[i % COLS] += d * pre[i]));
      assertClose(values(y), expectY, { atol: 0, rtol: 0 }, 'y');
      assertClose(values(base.grad!), dbase, { atol: 0, rtol: 0 }, 'dbase');
      // dlora = s·dout ⊙ g rounded once; an f32 lora gets the same values back through the cast.
      assertClose(values(lora.grad!), dlora, { atol: 0, rtol: 0 }, 'dlora');
      assertClose(values(g.grad!), dg, { atol: 1e-12, rtol: 1e-12 }, 'dg');
    });
  });
}

test('doraScale: on a backend without bf16 compute (cpu) a bf16 base computes in f32', () => {
  scope(() => {
    // The cpu backend named explicitly: the default device may be one that computes in bf16.
    const device = 'cpu';
    const base = tensor(randomData(ROWS * COLS, 5), [ROWS, COLS], { device, dtype: 'bf16' });
    const lora = tensor(randomData(ROWS * COLS, 6), [ROWS, COLS], { device });
    const g = tensor(randomData(COLS, 7), [COLS], { device });
    assert.equal(doraScaleDtype(base), 'f32');
    const y = doraScale(base, lora, g, S);
    assert.equal(y.dtype, 'f32');
    const b = values(base), l = values(lora), gv = values(g);
    assertClose(values(y), b.map((bi, i) => (bi + S * l[i]) * gv[i % COLS]), { atol: 1e-6, rtol: 1e-6 });
  });
});

test('doraCombine and doraCombinePeft keep a bf16 base in bf16 (with a bias, and in PEFT form) and agree with the f32 computation', () => {
  scope(() => {
    const device = 'reference';
    const bf16 = (data: Float32Array, shape: number[]) => tensor(data, shape, { device, dtype: 'bf16' });
    const f32 = (data: Float32Array, shape: number[]) => tensor(data, shape, { device });
    const base = randomData(ROWS * COLS, 11), wxd = randomData(ROWS * COLS, 12), lora = randomData(ROWS * COLS, 13);
    const m = randomData(COLS, 14, 0.5, 1.5), n = randomData(COLS, 15, 0.5, 1.5), bias = randomData(COLS, 16);
    const shape = [ROWS, COLS];
    const cases = [
      ['bias', (b: typeof bf16) => doraCombine(b(base, shape), b(lora, shape), f32(m, [COLS]), f32(n, [COLS]), S, b(bias, [COLS]))],
      ['peft', (b: typeof bf16) => doraCombinePeft(b(base, shape), b(wxd, shape), b(lora, shape), f32(m, [COLS]), f32(n, [COLS]), S)],
    ] as const;
    for (const [what, run] of cases) {
      const lowered = run(bf16);
      assert.equal(lowered.dtype, 'bf16', what);
      // The f32 computation on the same bf16-rounded inputs; the bf16 result differs by its roundings.
      const exact = values(run((data, s) => f32(Float32Array.from(data, (v) => roundTo('bf16', v)), s)));
      assertClose(values(lowered), exact, { atol: 2e-2, rtol: 2e-2 }, what);
    }
  });
});
