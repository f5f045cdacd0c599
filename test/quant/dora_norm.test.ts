// DoRA's weight norm over a quantized base, quantizedDoraNorm (src/quant/ops.ts): n_i =
// ‖W_i + s·(B·A)_i‖ with W the dequantized weight, against the f64 reference backend for
// int8 and NF4 (blocks of 64 and 32, nested or not) on shapes whose blocks straddle rows,
// leave a partial last block or span several nested blocks, with a non-zero B. On cuda
// (FINLORA_DEVICE=cuda) the doraNormQuantized kernel reads W from its codes; there it must
// give what dequantize-then-doraNorm gives, without allocating a dense copy of W. The cpu
// keeps the dequantize-then-doraNorm route (its doraNorm reads a dense W).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DoraVariant } from '../../src/adapters/lora/dora.js';
import { LoraLayer } from '../../src/adapters/lora/layer.js';
import { noGrad } from '../../src/autograd/tape.js';
import { CudaBackend } from '../../src/backend/cuda/cuda.js';
import { getBackend } from '../../src/backend/registry.js';
import { Linear } from '../../src/nn/linear.js';
import { tensor } from '../../src/ops/creation.js';
import { doraNorm } from '../../src/ops/dora.js';
import { assign } from '../../src/ops/inplace.js';
import { quantizeInt8Host } from '../../src/quant/int8.js';
import { quantizeNf4Host } from '../../src/quant/nf4.js';
import { dequantize, quantizedDoraNorm } from '../../src/quant/ops.js';
import { Int8Weight, Nf4Weight, type QuantizedWeight } from '../../src/quant/weight.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, randomData, testBackends, values } from '../helpers.js';

const onCuda = testBackends().includes('cuda');
const skipCuda = onCuda ? false : 'the cuda backend is not under test (set FINLORA_DEVICE=cuda on a machine with the addon built)';

type Variant = 'int8' | 'nf4' | 'nf4-nested' | 'nf4-32-nested';
const VARIANTS: readonly Variant[] = ['int8', 'nf4', 'nf4-nested', 'nf4-32-nested'];
const S = 2;

// [rows, cols, r]: 70 and 257 columns leave no multiple of 8 (one column per step) and
// blocks straddling rows; 130 × 257 an odd element count and a partial last block;
// 40 × 1024 spans three nested blocks of 256 × 64 values; 33 × 128 and 64 × 512 take
// eight columns per step.
const SHAPES: [number, number, number][] = [[5, 70, 1], [33, 128, 8], [130, 257, 2], [40, 1024, 8], [64, 512, 16], [3, 8, 0]];

function normalData(n: number, seed: number, std = 0.05): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.normal() * std);
}

/** The weight quantized once on the host, so every backend holds the same codes. */
function hostWeight(variant: Variant, rows: number, cols: number, seed: number) {
  const data = normalData(rows * cols, seed);
  // An outlier that dominates its row / block, and an all-zero row.
  if (rows > 2) {
    data[cols + 3] = 0.9;
    data.fill(0, 2 * cols, 3 * cols);
  }
  if (variant === 'int8') return { variant, host: quantizeInt8Host(data, rows, cols) } as const;
  return { variant, host: quantizeNf4Host(data, [rows, cols], { blocksize: variant === 'nf4-32-nested' ? 32 : 64, doubleQuant: variant !== 'nf4' }) } as const;
}

function onDevice(w: ReturnType<typeof hostWeight>, device: string): QuantizedWeight {
  return w.variant === 'int8' ? Int8Weight.fromHost(w.host, { device }) : Nf4Weight.fromHost(w.host, { device });
}

/** A [r, cols] and B [rows, r] with s·B·A of W's size (B non-zero, as after training). */
function adapter(rows: number, cols: number, r: number, seed: number) {
  return { a: randomData(r * cols, seed, -1 / Math.sqrt(r + 1), 1 / Math.sqrt(r + 1)), b: randomData(rows * r, seed + 1, -0.05, 0.05) };
}

test('quantizedDoraNorm matches the f64 reference on every test backend: int8 and nf4, nested or not, non-zero B', () => {
  for (const variant of VARIANTS) {
    for (const [rows, cols, r] of SHAPES) {
      const hw = hostWeight(variant, rows, cols, rows * 31 + cols);
      const { a, b } = adapter(rows, cols, r, rows + cols);
      const run = (device: string) =>
        scope(() => {
          const w = onDevice(hw, device);
          try {
            return values(quantizedDoraNorm(w, tensor(a, [r, cols], { device }), tensor(b, [rows, r], { device }), S));
          } finally {
            w.dispose();
          }
        });
      const expected = run('reference');
      assert.ok(expected.every((v) => Number.isFinite(v) && v >= 0), `${variant} [${rows}, ${cols}]: reference norms`);
      for (const device of testBackends()) {
        assertClose(run(device), expected, { atol: 1e-6, rtol: 2e-6 }, `${variant} [${rows}, ${cols}] r ${r} on ${device}`);
      }
    }
  }
});

test('quantizedDoraNorm checks its operands', () => {
  const hw = hostWeight('int8', 4, 16, 1);
  const w = onDevice(hw, 'cpu');
  try {
    // Every tensor on the cpu explicitly: the default device is FINLORA_DEVICE's.
    assert.throws(() => quantizedDoraNorm(w, tensor(new Float32Array(2 * 15), [2, 15], { device: 'cpu' }), tensor(new Float32Array(8), [4, 2], { device: 'cpu' }), S), /quantizedDoraNorm: a \[r, 16\] and b \[4, r\] expected for the quantized weight \[4, 16\], got \[2, 15\] and \[4, 2\]/);
    assert.throws(() => quantizedDoraNorm(w, tensor(new Float32Array(32), [2, 16], { device: 'reference' }), tensor(new Float32Array(8), [4, 2], { device: 'cpu' }), S), /quantizedDoraNorm: a lives on reference, the quantized weight on cpu/);
  } finally {
    w.dispose();
  }
});

test('cuda: doraNormQuantized gives what dequantize then doraNorm gives, without a dense copy of W', { skip: skipCuda }, () => {
  const cuda = getBackend('cuda');
  assert.ok(cuda instanceof CudaBackend);
  assert.ok(cuda.kernels.doraNormQuantized !== undefined, 'the cuda addon registers doraNormQuantized');
  for (const variant of VARIANTS) {
    // 4100 and 1500 rows take 16 and 8 rows per block on an H200 (132 multiprocessors),
    // four columns per step (256) or one (70).
    const large: [number, number, number][] = [[1024, 4096, 8], [4100, 256, 8], [4100, 70, 3], [1500, 256, 8]];
    for (const [rows, cols, r] of [...SHAPES, ...large]) {
      const hw = hostWeight(variant, rows, cols, rows + 7 * cols);
      const { a, b } = adapter(rows, cols, r, rows * 3 + cols);
      scope(() => {
        const w = onDevice(hw, 'cuda');
        try {
          const A = tensor(a, [r, cols], { device: 'cuda' }), B = tensor(b, [rows, r], { device: 'cuda' });
          const viaDense = scope(() => values(doraNorm(dequantize(w), A, B, S)));
          cuda.syncNow();
          // resetPeak starts the high-water mark from the bytes live now.
          cuda.resetPeak();
          const live = cuda.peakBytes();
          const n = quantizedDoraNorm(w, A, B, S);
          cuda.syncNow();
          const grew = cuda.peakBytes() - live;
          // Same decoded values, same per-thread column walk and reduction order.
          assertClose(values(n), viaDense, { atol: 1e-7, rtol: 1e-6 }, `${variant} [${rows}, ${cols}] r ${r}: fused vs dequantize + doraNorm`);
          // Small shapes sit below the allocator's size classes; a 1024 × 4096 W is 16 MiB in f32, its norms 4 KiB.
          if (rows * cols >= 1 << 20) assert.ok(grew < rows * cols, `${variant} [${rows}, ${cols}]: ${grew} bytes allocated, a dense f32 W is ${rows * cols * 4}`);
        } finally {
          w.dispose();
        }
      });
    }
  }
});

test('a DoRA layer over an nf4 base takes its norm from the codes on every test backend (the reference norm of the dequantized W)', () => {
  const [rows, cols, r] = [48, 256, 4];
  const hw = hostWeight('nf4-nested', rows, cols, 9);
  const { a, b } = adapter(rows, cols, r, 10);
  const expected = scope(() => {
    const w = onDevice(hw, 'reference');
    try {
      return values(quantizedDoraNorm(w, tensor(a, [r, cols], { device: 'reference' }), tensor(b, [rows, r], { device: 'reference' }), S));
    } finally {
      w.dispose();
    }
  });
  for (const device of testBackends()) {
    const target = new Linear(tensor(new Float32Array(rows * cols), [rows, cols], { device }));
    target.setQuantizedWeight(onDevice(hw, device));
    const layer = new LoraLayer('proj', target, { hyper: { r, lora_alpha: S * r, scaling: S }, lora_dropout: 0, dropoutSemantics: 'finlora', rng: new Rng(5), dropout: null, variant: (l) => new DoraVariant(l) });
    try {
      noGrad(() => {
        assign(layer.lora_A.weight, tensor(a, [r, cols], { device }));
        assign(layer.lora_B.weight, tensor(b, [rows, r], { device }));
      });
      const variant = layer.variant;
      assert.ok(variant instanceof DoraVariant);
      target.train();
      const n = scope(() => values(variant.weightNorm(layer)));
      assertClose(n, expected, { atol: 1e-6, rtol: 2e-6 }, `layer norm on ${device}`);
    } finally {
      layer.unload();
      target.dispose();
    }
  }
});
