import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { kernel } from '../../src/backend/backend.js';
import { getBackend } from '../../src/backend/registry.js';
import { add, mul } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { rmsNorm } from '../../src/ops/rmsnorm.js';
import { gradDtype } from '../../src/ops/util.js';
import { cast } from '../../src/ops/view.js';
import { empty, scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData, testBackends, values } from '../helpers.js';
import { forEachIsa } from './isa_levels.js';

const norm = (eps: number) => (x: Tensor, w: Tensor) => rmsNorm(x, w, eps);

test('rmsNorm: matches the reference on odd shapes, strided inputs and bf16, at every SIMD level', () => {
  forEachIsa(() => {
    checkAgainstReference(norm(1e-6), [{ shape: [5, 7] }, { shape: [7] }]);
    checkAgainstReference(norm(1e-5), [{ shape: [2, 3, 33], strided: true }, { shape: [33] }]);
    checkAgainstReference(norm(1e-6), [{ shape: [9, 130], strided: true }, { shape: [130] }]);
    checkAgainstReference(norm(1e-6), [{ shape: [3, 64], dtype: 'bf16' }, { shape: [64], dtype: 'bf16' }]);
    checkAgainstReference(norm(0.5), [{ shape: [1, 1] }, { shape: [1] }]);
  });
});

test('rmsNorm: values follow y = x / sqrt(mean(x^2) + eps) * w', () => {
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const y = rmsNorm(tensor([3, 4, 0, 0], [2, 2], { device }), tensor([1, 2], [2], { device }), 0);
      // row 1: rms = sqrt(12.5); row 2: all zeros (eps 0) gives NaN like PyTorch
      assertClose(values(y).slice(0, 2), [3 / Math.sqrt(12.5), 8 / Math.sqrt(12.5)], { atol: 1e-6 }, device);
    });
  }
});

test('rmsNorm: the mean of squares is accurate for long rows of large values', () => {
  // 1e4 + small noise over 8192 elements: an f32 running sum would lose the noise
  const D = 8192;
  const data = Array.from(randomData(D, 9), (v) => 1e4 + v);
  checkAgainstReference(norm(1e-6), [{ shape: [1, D], data }, { shape: [D] }], { atol: 1e-6, rtol: 1e-6 });
});

test('rmsNorm: gradients of x and weight match finite differences', () => {
  gradcheck(norm(1e-6), [{ shape: [3, 5] }, { shape: [5] }]);
  gradcheck(norm(0.1), [{ shape: [2, 2, 9], strided: true }, { shape: [9] }]);
  gradcheck(norm(1e-6), [{ shape: [4, 6] }, { shape: [6], noGrad: true }]);
});

test('rmsNorm: the fused backward kernel matches the reference on larger rows', () => {
  forEachIsa(() => checkAgainstReference(
    (x: Tensor, w: Tensor, g: Tensor) => {
      x.requiresGrad = true;
      w.requiresGrad = true;
      backward(rmsNorm(x, w, 1e-5), g);
      return [x.grad!, w.grad!];
    },
    [{ shape: [37, 75], strided: true }, { shape: [75] }, { shape: [37, 75] }],
    { atol: 1e-5, rtol: 1e-4 },
  ));
});

test('rmsNorm: rows of a multiple of 8 (read 16 bytes at a time on the GPU) match the reference forward and backward, frozen or trainable weight', () => {
  const dxOnly = (x: Tensor, w: Tensor, g: Tensor) => {
    x.requiresGrad = true;
    backward(rmsNorm(x, w, 1e-5), g);
    return [x.grad!];
  };
  const both = (x: Tensor, w: Tensor, g: Tensor) => {
    x.requiresGrad = true;
    w.requiresGrad = true;
    backward(rmsNorm(x, w, 1e-5), g);
    return [x.grad!, w.grad!];
  };
  checkAgainstReference(norm(1e-6), [{ shape: [6, 264] }, { shape: [264] }]);
  checkAgainstReference(norm(1e-6), [{ shape: [5, 48], dtype: 'bf16' }, { shape: [48], dtype: 'bf16' }]);
  checkAgainstReference(dxOnly, [{ shape: [7, 520] }, { shape: [520] }, { shape: [7, 520] }], { atol: 1e-5, rtol: 1e-4 });
  checkAgainstReference(dxOnly, [{ shape: [4, 2048], dtype: 'bf16' }, { shape: [2048], dtype: 'bf16' }, { shape: [4, 2048], dtype: 'bf16' }]);
  checkAgainstReference(both, [{ shape: [9, 72] }, { shape: [72] }, { shape: [9, 72] }], { atol: 1e-5, rtol: 1e-4 });
});

test('rmsNorm: mismatched weight and bad eps are refused', () => {
  scope(() => {
    const x = tensor(new Float32Array(6), [2, 3]);
    assert.throws(() => rmsNorm(x, tensor([1, 1], [2])), /rmsNorm: weight \[2\] does not match the last axis of x \[2, 3\]/);
    assert.throws(() => rmsNorm(x, tensor([1, 1, 1], [3]), -1), /rmsNorm: eps must be non-negative/);
    assert.throws(() => rmsNorm(tensor([1], [1], { dtype: 'int32' }), tensor([1], [1])), /rmsNorm: x must be f32 or bf16 or f16, got int32/);
  });
});

test('rmsNorm: a bf16 weight read by the kernels gives the bits of the same weight widened to f32 first (forward, dx, dweight), at every SIMD level', () => {
  forEachIsa(() => {
    for (const device of testBackends()) {
      scope(() => {
        const [N, D] = [6, 45];
        const xs = randomData(N * D, 21), ws = randomData(D, 22, 0.5, 1.5), gs = randomData(N * D, 23);
        const run = (wDtype: 'f32' | 'bf16') => {
          const x = tensor(xs, [N, D], { device, requiresGrad: true });
          // The same bf16-representable values either way: round through bf16, then hold them as f32 or bf16.
          const wb = tensor(ws, [D], { device, dtype: 'bf16' });
          const w = wDtype === 'bf16' ? wb : cast(wb, 'f32');
          w.requiresGrad = true;
          const y = rmsNorm(x, w, 1e-6);
          backward(y, tensor(gs, [N, D], { device }));
          // A bf16 leaf's gradient is bf16 where the backend computes in bf16: compare dweight at that precision.
          return [y, x.grad!, cast(w.grad!, gradDtype(wb))].map((t) => Array.from(t.toArray()));
        };
        const [wide, narrow] = [run('f32'), run('bf16')];
        assert.deepEqual(narrow, wide);
      });
    }
  });
});

test('rmsnormBackwardDx gives rmsnormBackward\'s dx bit for bit, and with accumulate adds it as binary add would (f32 and bf16 weights, every SIMD level)', () => {
  const cpu = getBackend('cpu');
  const dxOnly = cpu.kernels.rmsnormBackwardDx;
  assert.ok(dxOnly !== undefined, 'the cpu backend has rmsnormBackwardDx');
  forEachIsa(() => {
    for (const [N, D] of [[1, 1], [7, 33], [130, 70]] as const) {
      for (const wDtype of ['f32', 'bf16'] as const) {
        scope(() => {
          const x = tensor(randomData(N * D, 51), [N, D], { device: cpu });
          const w = tensor(randomData(D, 52, 0.5, 1.5), [D], { device: cpu, dtype: wDtype });
          const dy = tensor(randomData(N * D, 53), [N, D], { device: cpu });
          const y = empty([N, D], 'f32', cpu), rstd = empty([N], 'f32', cpu);
          kernel(cpu, 'rmsnorm')(x, w, y, rstd, 1e-6);
          const full = empty([N, D], 'f32', cpu), dw = empty([D], 'f32', cpu);
          kernel(cpu, 'rmsnormBackward')(x, w, rstd, dy, full, dw);
          const alone = empty([N, D], 'f32', cpu);
          dxOnly(x, w, rstd, dy, alone, false);
          assert.deepEqual(Array.from(alone.toArray()), Array.from(full.toArray()), `dx ${N}x${D} ${wDtype}`);
          const prev = randomData(N * D, 54);
          const acc = tensor(prev, [N, D], { device: cpu });
          dxOnly(x, w, rstd, dy, acc, true);
          const sum = tensor(prev, [N, D], { device: cpu });
          kernel(cpu, 'binary')('add', sum, full, sum);
          assert.deepEqual(Array.from(acc.toArray()), Array.from(sum.toArray()), `dx += ${N}x${D} ${wDtype}`);
        });
      }
    }
  });
});

test('rmsNorm with a frozen weight: dx matches finite differences and the reference, whether or not x\'s gradient is pending already', () => {
  gradcheck((x: Tensor, w: Tensor) => add(rmsNorm(x, w, 1e-6), mul(x, 0.5)), [{ shape: [4, 9] }, { shape: [9], noGrad: true }]);
  checkAgainstReference(
    (x: Tensor, w: Tensor, g: Tensor) => {
      x.requiresGrad = true;
      // x reaches the loss directly and through the norm, as a residual stream does.
      backward(add(x, rmsNorm(x, w, 1e-5)), g);
      return [x.grad!];
    },
    [{ shape: [9, 40] }, { shape: [40] }, { shape: [9, 40] }],
    { atol: 1e-5, rtol: 1e-4 },
  );
});
