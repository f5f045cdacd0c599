// doraScale, DoRA's output scaling (base + s·lora) ⊙ g: the fused kernels against the
// reference on odd shapes at every SIMD level and thread count, gradients of all three
// inputs by finite differences, and the fused op against the composed ops it replaces.
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { add, mul } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { doraScale } from '../../src/ops/dora.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData } from '../helpers.js';
import { eachLevel } from './isa_levels.js';
import { withThreads } from './nn_helpers.js';

// 70 columns leave a partial 64-column band and vector tails; 300 x 5 has many rows per band.
const SHAPES = [[3, 70], [300, 5], [2, 3, 130], [1, 1]];
const S = 2.5;

test('doraScale: forward and backward against the reference at every SIMD level', async (t) => {
  await eachLevel(t, () => {
    for (const threads of [1, 2]) {
      withThreads(threads, () => {
        for (const shape of SHAPES) {
          const cols = [shape[shape.length - 1]];
          checkAgainstReference((b, l, g) => doraScale(b, l, g, S), [{ shape }, { shape }, { shape: cols }], { atol: 1e-6, rtol: 1e-5 });
          checkAgainstReference(
            (b, l, g, d) => {
              for (const x of [b, l, g]) x.requiresGrad = true;
              backward(doraScale(b, l, g, S), d);
              return [b.grad!, l.grad!, g.grad!];
            },
            [{ shape }, { shape }, { shape: cols }, { shape }],
            { atol: 1e-5, rtol: 1e-5 },
          );
        }
      });
    }
  });
});

test('doraScale: gradients by finite differences, strided inputs and frozen operands', () => {
  gradcheck((b, l, g) => doraScale(b, l, g, S), [{ shape: [4, 6] }, { shape: [4, 6], strided: true }, { shape: [6] }]);
  gradcheck((b, l, g) => doraScale(b, l, g, -0.5), [{ shape: [2, 3, 5], strided: true }, { shape: [2, 3, 5] }, { shape: [5], noGrad: true }]);
});

test('doraScale: the fused op agrees with (base + s·lora) ⊙ g composed from mul and add', () => {
  const shape = [37, 90];
  const run = (fused: boolean) =>
    scope(() => {
      const b = tensor(randomData(37 * 90, 1), shape, { requiresGrad: true });
      const l = tensor(randomData(37 * 90, 2), shape, { requiresGrad: true });
      const g = tensor(randomData(90, 3, 0.5, 1.5), [90], { requiresGrad: true });
      const y = fused ? doraScale(b, l, g, S) : mul(add(b, mul(l, S)), g);
      backward(y, tensor(randomData(37 * 90, 4), shape));
      return [y, b.grad!, l.grad!, g.grad!].map((x) => Float32Array.from(x.toArray()));
    });
  const [fused, composed] = [run(true), run(false)];
  fused.forEach((f, i) => assertClose(f, composed[i], { atol: 1e-6, rtol: 1e-5 }, ['y', 'dbase', 'dlora', 'dg'][i]));
});
