// siluMul (Llama's gated MLP activation): the fused kernels against the reference on odd
// sizes at every SIMD level and thread count, the gradient by finite differences, and
// the fused vector paths against the composed silu(gate) * up they replace: the same
// bits forward and for dup; dgate within rounding (the compiler may fuse its steps,
// and 1 + gate·(1 − s) cancels for large negative gate).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { mul } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { siluMul } from '../../src/ops/swiglu.js';
import { silu } from '../../src/ops/unary.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData } from '../helpers.js';
import { eachLevel } from './isa_levels.js';
import { withThreads } from './nn_helpers.js';

// 3 x 37 leaves a tail in every vector width; 4100 x 5 spans several 64-element blocks per thread.
const SHAPES = [[3, 37], [1, 1], [4100, 5]];

test('siluMul: forward and backward against the reference at every SIMD level', async (t) => {
  await eachLevel(t, () => {
    for (const threads of [1, 2]) {
      withThreads(threads, () => {
        for (const shape of SHAPES) {
          checkAgainstReference((g, u) => siluMul(g, u), [{ shape, data: randomData(shape[0] * shape[1], 1, -12, 12) }, { shape }], { atol: 1e-6, rtol: 1e-5 });
          checkAgainstReference(
            (g, u, d) => {
              g.requiresGrad = true;
              u.requiresGrad = true;
              backward(siluMul(g, u), d);
              return [g.grad!, u.grad!];
            },
            [{ shape, data: randomData(shape[0] * shape[1], 2, -12, 12) }, { shape }, { shape }],
            { atol: 1e-6, rtol: 1e-5 },
          );
        }
      });
    }
  });
});

test('siluMul: gradients by finite differences, strided inputs too', () => {
  gradcheck((g, u) => siluMul(g, u), [{ shape: [5, 7] }, { shape: [5, 7], strided: true }]);
  gradcheck((g, u) => siluMul(g, u), [{ shape: [4, 3], strided: true }, { shape: [4, 3], noGrad: true }]);
});

test('siluMul: the fused vector paths give the bits of silu(gate) * up and dup, dgate within rounding', async (t) => {
  await eachLevel(t, (level) => {
    if (level === 'scalar') return;
    scope(() => {
      const n = 1000;
      const special = [0, -0, 1e-30, -1e-30, 30, -30, 88, -88, 100, -100, Infinity, -Infinity];
      const gdata = Float32Array.from(randomData(n, 4, -20, 20).map((v, i) => (i < special.length ? special[i] : v)));
      const run = (fused: boolean) =>
        scope(() => {
          const g = tensor(gdata, [n], { requiresGrad: true });
          const u = tensor(randomData(n, 5), [n], { requiresGrad: true });
          const d = tensor(randomData(n, 6), [n]);
          const y = fused ? siluMul(g, u) : mul(silu(g), u);
          backward(y, d);
          return [y, g.grad!, u.grad!].map((x) => Float32Array.from(x.toArray()));
        });
      const [fused, composed] = [run(true), run(false)];
      const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer));
      assert.deepEqual(bits(fused[0]), bits(composed[0]), `${level} out`);
      assert.deepEqual(bits(fused[2]), bits(composed[2]), `${level} dup`);
      assertClose(fused[1], composed[1], { atol: 1e-7, rtol: 1e-5 }, `${level} dgate`);
    });
  });
});
