// dropoutLinear(x, W, p, at) against linear(dropout(x, p, at), W): the same output and
// the same gradients for x and W bit for bit (the mask is redrawn in backward from the
// same stream position), and x saved instead of the dropped copy.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { mul } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { dropout, dropoutLinear, DropoutGenerator, keepingDroppedInputs } from '../../src/ops/dropout.js';
import { linear } from '../../src/ops/matmul.js';
import { sum } from '../../src/ops/reduce.js';
import { cast } from '../../src/ops/view.js';
import type { DType } from '../../src/tensor/dtype.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { randomData, testBackends } from '../helpers.js';

interface Result {
  readonly y: number[];
  readonly dx: number[] | null;
  readonly dw: number[] | null;
  readonly offset: number;
}

function run(device: string, dtype: DType, fused: boolean, wantX: boolean, wantW: boolean, keepDropped = false): Result {
  return scope(() => {
    const x = tensor(randomData(2 * 5 * 6, 1), [2, 5, 6], { device, requiresGrad: wantX });
    const w = tensor(randomData(3 * 6, 2), [3, 6], { device, requiresGrad: wantW });
    const probe = tensor(randomData(2 * 5 * 3, 3), [2, 5, 3], { device });
    const gen = new DropoutGenerator(17, 5);
    // The forward in a scope: what the record does not save is freed before backward.
    const y = scope(() => {
      const xc = cast(mul(x, 1.5), dtype);
      const wc = cast(mul(w, 1), dtype);
      const product = () => (fused ? dropoutLinear(xc, wc, 0.3, gen) : linear(dropout(xc, 0.3, gen), wc));
      return keepDropped ? keepingDroppedInputs(product) : product();
    });
    const values = [...cast(y, 'f32').toArray()];
    if (wantX || wantW) backward(sum(mul(cast(y, 'f32'), probe)));
    const read = (t: Tensor) => (t.grad === null ? null : [...t.grad.toArray()]);
    return { y: values, dx: read(x), dw: read(w), offset: gen.offset };
  });
}

for (const device of ['reference', ...testBackends()]) {
  test(`dropoutLinear equals linear(dropout(x)) bit for bit, values and gradients (${device})`, () => {
    for (const dtype of ['f32', 'bf16'] as const) {
      for (const [wantX, wantW] of [[true, true], [true, false], [false, true], [false, false]] as const) {
        const what = `${device} ${dtype} x ${wantX ? 'trainable' : 'frozen'}, W ${wantW ? 'trainable' : 'frozen'}`;
        const plain = run(device, dtype, false, wantX, wantW);
        const fused = run(device, dtype, true, wantX, wantW);
        assert.deepEqual(fused, plain, what);
        // Keeping the dropped input for dW (as a checkpointed layer's recomputation does) instead of redrawing it.
        assert.deepEqual(run(device, dtype, true, wantX, wantW, true), plain, `${what}, dropped input kept`);
        // Dropped inputs get exactly zero gradient: the mask is in play.
        if (wantX) assert.ok(plain.dx!.some((v) => v === 0) && plain.dx!.some((v) => v !== 0), `${what}: the mask drops some inputs`);
        if (wantW) assert.ok(plain.dw!.some((v) => v !== 0), `${what}: dW is not zero`);
        assert.equal(fused.offset, 5 + 2 * 5 * 6, 'one draw of x.size from the stream');
      }
    }
  });
}
