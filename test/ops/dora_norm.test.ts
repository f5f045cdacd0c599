// doraNorm, DoRA's weight norm ‖W_i + s·(B·A)_i‖ in the direct form: the cpu (and cuda)
// kernels against the f64 reference at every SIMD level and thread count, for f32 and
// bf16 W, r from 1 to 16, odd widths and widths that cross the kernel's 64- and
// 512-column stretches; rows that the update cancels (W_i ≈ −s·(B·A)_i), where the
// low-rank identity loses its digits and the direct kernel must not; the composed
// direct form; and a DoRA layer taking the kernel without reading anything back.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DoraVariant, directRowNorms, lowRankNormSquared, weightNormSquared } from '../../src/adapters/lora/dora.js';
import { denseFrozenWeight, LoraLayer } from '../../src/adapters/lora/layer.js';
import { noGrad } from '../../src/autograd/tape.js';
import { Linear } from '../../src/nn/linear.js';
import { assign } from '../../src/ops/inplace.js';
import { Rng } from '../../src/tensor/rng.js';
import { tensor } from '../../src/ops/creation.js';
import { doraNorm } from '../../src/ops/dora.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, randomData, testBackends, values } from '../helpers.js';
import { eachLevel } from './isa_levels.js';
import { withThreads } from './nn_helpers.js';

// [rows, cols, r]: 70 and 129 leave vector tails, 600 and 1100 cross 512-column stretches,
// 70 and 130 rows span 64-row tiles with groups of four and rows left over.
const SHAPES: [number, number, number][] = [
  [5, 70, 1], [33, 129, 16], [4, 64, 8], [3, 1, 2], [7, 600, 3], [2, 1100, 8], [9, 40, 0], [70, 45, 5], [130, 530, 2],
];
const S = 1.75;

test('doraNorm: the kernels against the reference at every SIMD level and thread count, f32 and bf16 W', async (t) => {
  await eachLevel(t, () => {
    for (const threads of [1, 2]) {
      withThreads(threads, () => {
        for (const [rows, cols, r] of SHAPES) {
          for (const dtype of ['f32', 'bf16'] as const) {
            checkAgainstReference((w, a, b) => doraNorm(w, a, b, S), [{ shape: [rows, cols], dtype }, { shape: [r, cols] }, { shape: [rows, r] }], { atol: 1e-6, rtol: 2e-6 });
          }
        }
      });
    }
  });
});

// The CUDA kernel gives a block 16, 8 or 4 rows (the most that still leave at most 1/8
// of the multiprocessors idle and whose s·B fits in 48 KiB) and walks four columns per
// thread where cols is a multiple of 8, else one. On a GPU of 108 to 214
// multiprocessors (an H200 has 132): 4100 rows take 16 per block (the last block 4 rows
// short), 1500 rows 8, 2200 rows at r 800 8 (16 · 800 floats would not fit), 600 rows
// 4; 3072 is the largest rank. Each with vector and scalar columns.
test('doraNorm: row counts and ranks that choose each of the GPU kernel\'s block shapes, f32 and bf16 W', () => {
  const shapes: [number, number, number][] = [
    [4100, 264, 8], [4100, 67, 3], [1500, 264, 8], [1500, 67, 5], [2200, 40, 800], [600, 264, 8], [5, 16, 3072], [5, 19, 3072],
  ];
  for (const [rows, cols, r] of shapes) {
    for (const dtype of ['f32', 'bf16'] as const) {
      checkAgainstReference((w, a, b) => doraNorm(w, a, b, S), [{ shape: [rows, cols], dtype }, { shape: [r, cols] }, { shape: [rows, r] }], { atol: 1e-6, rtol: 2e-6 });
    }
  }
});

/**
 * W, A, B whose updates cancel W's rows up to a residual of size `residual` per entry:
 * W_i = round(−s·(B·A)_i + δ_i), the rounding to W's dtype included in the truth the
 * reference computes.
 */
function cancelling(rows: number, cols: number, r: number, residual: number, dtype: 'f32' | 'bf16') {
  const a = randomData(r * cols, 11), b = randomData(rows * r, 12), delta = randomData(rows * cols, 13, -residual, residual);
  const w = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let c = 0; c < cols; c++) {
      let ba = 0;
      for (let k = 0; k < r; k++) ba += b[i * r + k] * a[k * cols + c];
      w[i * cols + c] = roundTo(dtype, -S * ba + delta[i * cols + c]);
    }
  }
  return { w, a, b };
}

test('doraNorm: rows the update cancels keep their small norm accurately (where the low-rank identity fails)', async (t) => {
  const [rows, cols, r] = [6, 257, 8];
  for (const dtype of ['f32', 'bf16'] as const) {
    const { w, a, b } = cancelling(rows, cols, r, 1e-3, dtype);
    const specs = [{ shape: [rows, cols], data: w, dtype }, { shape: [r, cols], data: a }, { shape: [rows, r], data: b }];
    await eachLevel(t, () => checkAgainstReference((wt, at, bt) => doraNorm(wt, at, bt, S), specs, { atol: 0, rtol: 1e-4 }));
  }
  // The same rows through the identity: its n² carries an error of order ε·‖W_i‖², far
  // beyond the residual's size, which is why the identity path needs its host check.
  const { w, a, b } = cancelling(rows, cols, r, 1e-3, 'f32');
  scope(() => {
    const [W, A, B] = [tensor(w, [rows, cols]), tensor(a, [r, cols]), tensor(b, [rows, r])];
    const frozen = denseFrozenWeight(new Linear(W));
    const truth = values(doraNorm(tensor(w, [rows, cols], { device: 'reference' }), tensor(a, [r, cols], { device: 'reference' }), tensor(b, [rows, r], { device: 'reference' }), S));
    const direct = values(doraNorm(W, A, B, S));
    const identity = values(lowRankNormSquared(frozen, weightNormSquared(frozen), A, B, S).n2).map((n2) => Math.sqrt(Math.max(n2, 0)));
    const worst = (xs: Float64Array) => Math.max(...xs.map((x, i) => Math.abs(x - truth[i]) / truth[i]));
    assert.ok(worst(direct) < 1e-4, `direct kernel relative error ${worst(direct)}`);
    assert.ok(worst(identity) > 100 * worst(direct), `identity relative error ${worst(identity)} vs direct ${worst(direct)}`);
  });
});

test('doraNorm: the kernel agrees with the composed direct form, and rejects mismatched shapes naming them', () => {
  const [rows, cols, r] = [40, 333, 4];
  scope(() => {
    const W = tensor(randomData(rows * cols, 1), [rows, cols], { dtype: 'bf16' });
    const A = tensor(randomData(r * cols, 2), [r, cols]);
    const B = tensor(randomData(rows * r, 3), [rows, r]);
    assertClose(values(doraNorm(W, A, B, -0.5)), values(directRowNorms(denseFrozenWeight(new Linear(W)), A, B, -0.5)), { atol: 1e-6, rtol: 1e-5 });
    assert.throws(() => doraNorm(W, B, A, 1), /doraNorm: w \[rows, cols\], a \[r, cols\] and b \[rows, r\] expected, got \[40, 333\], \[40, 4\] and \[4, 333\]/);
  });
});

for (const device of testBackends()) {
  test(`doraNorm: a DoRA layer on ${device} takes the kernel, reads nothing back, and gets the reference norm`, () => {
    const [rows, cols, r] = [24, 96, 4];
    const { w, a, b } = cancelling(rows, cols, r, 1e-2, 'f32');
    const target = new Linear(tensor(w, [rows, cols], { device }));
    const layer = new LoraLayer('proj', target, {
      hyper: { r, lora_alpha: S * r, scaling: S },
      lora_dropout: 0,
      dropoutSemantics: 'finlora',
      rng: new Rng(5),
      dropout: null,
      variant: (l) => new DoraVariant(l),
    });
    noGrad(() => {
      assign(layer.lora_A.weight, tensor(a, [r, cols], { device }));
      assign(layer.lora_B.weight, tensor(b, [rows, r], { device }));
    });
    const variant = layer.variant;
    assert.ok(variant instanceof DoraVariant);
    const backend = target.weight.backend;
    const read = backend.read;
    let reads = 0;
    backend.read = (...args) => {
      reads++;
      return read.apply(backend, args);
    };
    const norm = (() => {
      try {
        return variant.weightNorm(layer);
      } finally {
        backend.read = read;
      }
    })();
    assert.equal(reads, 0, 'the norm is computed without reading from the backend');
    assert.deepEqual(variant.lastFallbackRows, []);
    const truth = scope(() => values(doraNorm(tensor(w, [rows, cols], { device: 'reference' }), tensor(a, [r, cols], { device: 'reference' }), tensor(b, [rows, r], { device: 'reference' }), S)));
    assertClose(values(norm), truth, { atol: 0, rtol: 1e-5 });
    norm.dispose();
    layer.unload();
    target.dispose();
  });
}
