// The CUDA backend's quantized kernels against the cpu backend's (the reference for
// them): load-time quantization gives the same bytes (int8 codes and row absmaxes, NF4
// nibbles and block absmaxes, the double-quantized statistics), dequantize the same
// values, and quantizedMatmul the same products within f32 rounding, in f32 and in bf16
// (a and out bf16: tensor-core GEMMs on W decoded to bf16, or the GEMV for a few rows),
// including weights larger than the kernel's decoding scratch so it works band by band. Runs with
// FINLORA_DEVICE=cuda; skipped (saying so) elsewhere.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kernel } from '../../src/backend/backend.js';
import { tensor } from '../../src/ops/creation.js';
import { dequantize } from '../../src/quant/ops.js';
import { type QuantizedWeight, quantizeInt8, quantizeNf4 } from '../../src/quant/weight.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { Rng } from '../../src/tensor/rng.js';
import { keep, scope } from '../../src/tensor/tensor.js';
import { assertClose, randomData, testBackends, values } from '../helpers.js';

const skip = testBackends().includes('cuda') ? false : 'the cuda backend is not under test (set FINLORA_DEVICE=cuda on a machine with the addon built)';

function normalData(n: number, seed: number, std = 0.05): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.normal() * std);
}

type Variant = 'int8' | 'nf4' | 'nf4-nested' | 'nf4-32';
const VARIANTS: readonly Variant[] = ['int8', 'nf4', 'nf4-nested', 'nf4-32'];

function quantize(variant: Variant, data: Float32Array, shape: [number, number], device: string, dtype: 'f32' | 'bf16' | 'f16' = 'f32'): QuantizedWeight {
  return scope(() => {
    const w = tensor(data, shape, { device, dtype });
    const q = variant === 'int8' ? quantizeInt8(w) : quantizeNf4(w, { blocksize: variant === 'nf4-32' ? 32 : 64, doubleQuant: variant === 'nf4-nested' });
    for (const t of q.tensors()) keep(t);
    return q;
  });
}

/** The same weight quantized on the cpu and on cuda. */
function pair(variant: Variant, data: Float32Array, shape: [number, number], dtype: 'f32' | 'bf16' | 'f16' = 'f32') {
  return { cpu: quantize(variant, data, shape, 'cpu', dtype), cuda: quantize(variant, data, shape, 'cuda', dtype) };
}

// Blocks straddling rows, a partial last block, an odd element count (a padded nibble).
const SHAPES: [number, number][] = [[1, 1], [3, 5], [37, 70], [16, 64], [130, 257]];

test('cuda quantizeInt8 and quantizeNf4 give the cpu bytes for f32, bf16 and f16 weights', { skip }, () => {
  for (const variant of VARIANTS) {
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      for (const [rows, cols] of SHAPES) {
        const data = normalData(rows * cols, rows * 1000 + cols);
        // An all-zero row, and an outlier that dominates its block / row.
        if (rows > 2) {
          data.fill(0, cols, 2 * cols);
          data[2 * cols] = 3;
        }
        const { cpu, cuda } = pair(variant, data, [rows, cols], dtype);
        try {
          const [a, b] = [cpu.tensors(), cuda.tensors()];
          assert.equal(a.length, b.length);
          a.forEach((t, i) => assert.deepEqual(values(b[i]), values(t), `${variant} ${dtype} [${rows}, ${cols}] tensor ${i}`));
          if (cpu.format === 'nf4' && cuda.format === 'nf4') assert.equal(cuda.nested?.offset, cpu.nested?.offset);
        } finally {
          cpu.dispose();
          cuda.dispose();
        }
      }
    }
  }
});

test('cuda quantizeInt8: NaN and infinite values get the cpu codes', { skip }, () => {
  const data = normalData(4 * 9, 7);
  data[3] = NaN;
  data[9 + 2] = Infinity;
  data[18 + 5] = 70000; // rounds to f16 infinity
  const { cpu, cuda } = pair('int8', data, [4, 9]);
  try {
    cpu.tensors().forEach((t, i) => assert.deepEqual(values(cuda.tensors()[i]), values(t), `tensor ${i}`));
  } finally {
    cpu.dispose();
    cuda.dispose();
  }
});

test('cuda dequantize gives the cpu values', { skip }, () => {
  for (const variant of VARIANTS) {
    for (const [rows, cols] of SHAPES) {
      const { cpu, cuda } = pair(variant, normalData(rows * cols, rows + cols), [rows, cols]);
      try {
        assertClose(scope(() => values(dequantize(cuda))), scope(() => values(dequantize(cpu))), { atol: 0, rtol: 1e-7 }, `${variant} [${rows}, ${cols}]`);
      } finally {
        cpu.dispose();
        cuda.dispose();
      }
    }
  }
});

/** out (+)= a · op(W) on one device, as the kernel computes it; a and out in `dtype`. */
function product(w: QuantizedWeight, device: string, a: Float32Array, c0: Float32Array, M: number, transW: boolean, accumulate: boolean, dtype: 'f32' | 'bf16') {
  const K = transW ? w.cols : w.rows, N = transW ? w.rows : w.cols;
  return scope(() => {
    const at = tensor(a, [M, K], { device, dtype });
    const out = tensor(c0, [M, N], { device, dtype });
    kernel(at.backend, 'quantizedMatmul')(at, w, out, { transW, accumulate });
    assert.equal(out.dtype, dtype);
    return values(out);
  });
}

function checkProducts(variant: Variant, rows: number, cols: number, Ms: readonly number[]): void {
  const { cpu, cuda } = pair(variant, normalData(rows * cols, rows * 7 + cols), [rows, cols]);
  try {
    for (const M of Ms) {
      for (const transW of [true, false]) {
        const K = transW ? cols : rows, N = transW ? rows : cols;
        const a = randomData(M * K, M + K), c0 = randomData(M * N, N + 1);
        for (const accumulate of [false, true]) {
          const what = `${variant} W [${rows}, ${cols}] M ${M} transW ${transW} accumulate ${accumulate}`;
          // f32: the same function within f32 rounding of K terms.
          const want = product(cpu, 'cpu', a, c0, M, transW, accumulate, 'f32');
          assertClose(product(cuda, 'cuda', a, c0, M, transW, accumulate, 'f32'), want, { atol: 2e-5 * Math.sqrt(K + 1), rtol: 1e-4 }, `f32 ${what}`);
          // bf16: a and c0 rounded to bf16 as the kernel sees them, W decoded to bf16 (a relative
          // change of at most 2^-9 per value) and one rounding of each output.
          const ab = Float32Array.from(a, (v) => roundTo('bf16', v)), cb = Float32Array.from(c0, (v) => roundTo('bf16', v));
          const exact = product(cpu, 'cpu', ab, cb, M, transW, accumulate, 'f32');
          const absW = scope(() => values(dequantize(cpu))).map(Math.abs);
          const bound = new Float64Array(M * N);
          for (let m = 0; m < M; m++) {
            for (let k = 0; k < K; k++) {
              const am = Math.abs(ab[m * K + k]);
              for (let n = 0; n < N; n++) bound[m * N + n] += am * (transW ? absW[n * cols + k] : absW[k * cols + n]);
            }
          }
          const got = product(cuda, 'cuda', a, c0, M, transW, accumulate, 'bf16');
          got.forEach((g, i) => {
            const tol = bound[i] * 2 ** -8 + Math.abs(exact[i]) * 2 ** -8 + 1e-6;
            assert.ok(Math.abs(g - exact[i]) <= tol, `bf16 ${what}: element ${i} is ${g}, expected ${exact[i]} within ${tol}`);
          });
        }
      }
    }
  } finally {
    cpu.dispose();
    cuda.dispose();
  }
}

test('cuda quantizedMatmul: f32 and bf16 products against the cpu kernel (forward x·Wᵀ and gradient dy·W)', { skip }, () => {
  for (const variant of VARIANTS) {
    // Widths that are multiples of 8 take the eight-at-a-time decoding and, for at most 4
    // rows of a, the forward GEMV; the others decode value by value.
    for (const [rows, cols] of [[7, 3], [37, 70], [65, 130], [40, 136], [41, 136], [3, 16]] as const) checkProducts(variant, rows, cols, [1, 3, 5, 33]);
  }
});

test('cuda quantizedMatmul: a weight larger than the decoding scratch goes band by band', { skip }, () => {
  // 4160 x 4096 values: more than the 32 MiB scratch holds in bf16 (two bands) and in f32 (three).
  const [rows, cols] = [4160, 4096];
  const { cpu, cuda } = pair('nf4-nested', normalData(rows * cols, 99), [rows, cols]);
  try {
    for (const transW of [true, false]) {
      // 6 rows: past the GEMV's 4, so the forward goes through the bands too.
      const M = 6, K = transW ? cols : rows, N = transW ? rows : cols;
      const a = randomData(M * K, 5), c0 = randomData(M * N, 6);
      const want = product(cpu, 'cpu', a, c0, M, transW, true, 'f32');
      assertClose(product(cuda, 'cuda', a, c0, M, transW, true, 'f32'), want, { atol: 2e-5 * Math.sqrt(K + 1), rtol: 1e-4 }, `f32 transW ${transW}`);
      const ab = Float32Array.from(a, (v) => roundTo('bf16', v)), cb = Float32Array.from(c0, (v) => roundTo('bf16', v));
      const exact = product(cpu, 'cpu', ab, cb, M, transW, true, 'f32');
      const scale = Math.max(...exact.map(Math.abs));
      assertClose(product(cuda, 'cuda', a, c0, M, transW, true, 'bf16'), exact, { atol: 2e-2 * scale, rtol: 1e-2 }, `bf16 transW ${transW}`);
    }
  } finally {
    cpu.dispose();
    cuda.dispose();
  }
});
