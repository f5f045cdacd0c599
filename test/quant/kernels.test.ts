// The quantized kernels: the cpu backend's quantizedMatmul (forward x·Wᵀ and input
// gradient dy·W), dequantize and load-time quantization against the reference backend,
// on odd shapes (blocks straddling rows, odd nibble starts, partial blocks and tiles),
// both the streaming (few rows) and the blocked path, every SIMD level and uneven
// thread counts; quantizedLinear's gradient against finite differences.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward, noGrad } from '../../src/autograd/tape.js';
import { kernel } from '../../src/backend/backend.js';
import { defaultBackend, getBackend } from '../../src/backend/registry.js';
import { tensor } from '../../src/ops/creation.js';
import { linear } from '../../src/ops/matmul.js';
import { quantizeInt8Host } from '../../src/quant/int8.js';
import { NF4_CODE, quantizeBlockwiseHost, quantizeNf4Host, dynamicMap } from '../../src/quant/nf4.js';
import { dequantize, quantizedLinear } from '../../src/quant/ops.js';
import { Int8Weight, Nf4Weight, type QuantizedWeight, quantizeInt8, quantizeNf4 } from '../../src/quant/weight.js';
import { computesBf16 } from '../../src/ops/util.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { forEachIsa } from '../ops/isa_levels.js';
import { withThreads } from '../ops/nn_helpers.js';
import { assertClose, gradcheck, randomData, testBackends, values } from '../helpers.js';

const DEVICES = ['reference', ...testBackends()];

function normalData(n: number, seed: number, std = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.normal() * std);
}

type Variant = 'int8' | 'nf4' | 'nf4-nested' | 'nf4-32';

/** A host-quantized [rows, cols] weight uploaded to each device (the same bytes everywhere). */
function weights(variant: Variant, rows: number, cols: number, seed: number): Map<string, QuantizedWeight> {
  const w = normalData(rows * cols, seed, 0.05);
  const out = new Map<string, QuantizedWeight>();
  for (const device of DEVICES) {
    if (variant === 'int8') out.set(device, Int8Weight.fromHost(quantizeInt8Host(w, rows, cols), { device }));
    else {
      const blocksize = variant === 'nf4-32' ? 32 : 64;
      out.set(device, Nf4Weight.fromHost(quantizeNf4Host(w, [rows, cols], { blocksize, doubleQuant: variant !== 'nf4' }), { device }));
    }
  }
  return out;
}

function disposeAll(ws: Map<string, QuantizedWeight>): void {
  for (const w of ws.values()) w.dispose();
}

/**
 * Runs the kernel directly on the reference backend once; the returned check runs it
 * on each test backend (at the current SIMD level and thread count) and compares.
 */
function productCase(ws: Map<string, QuantizedWeight>, M: number, transW: boolean, accumulate: boolean): (what: string) => void {
  const ref = ws.get('reference')!;
  const K = transW ? ref.cols : ref.rows, N = transW ? ref.rows : ref.cols;
  const a = randomData(M * K, M * 31 + K);
  const c0 = randomData(M * N, N * 17 + 3);
  const run = (device: string) =>
    scope(() => {
      const at = tensor(a, [M, K], { device });
      const out = tensor(c0, [M, N], { device });
      kernel(at.backend, 'quantizedMatmul')(at, ws.get(device)!, out, { transW, accumulate });
      return values(out);
    });
  const expected = run('reference');
  return (what) => {
    for (const device of testBackends()) {
      // f32 accumulation over K terms of size ~0.05 against f64
      assertClose(run(device), expected, { atol: 2e-5 * Math.sqrt(K + 1), rtol: 1e-4 }, `${what} on ${device}`);
    }
  };
}

// [M, in, out]: the streaming paths (M <= 32 forward, <= 16 gradient) and the blocked
// ones; in not a multiple of 64 (blocks straddle rows, rows start on odd nibbles) or a
// multiple of 16 (NF4 decoded straight into registers, also past a kc block of 512);
// sizes past one kc block, past the micro-tiles (14x32, 6x16, 4x16) and past the
// streaming path's column chunks.
const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [3, 5, 7],
  [8, 33, 17],
  [1, 600, 9],
  [2, 70, 1030],
  [9, 64, 40],
  [17, 130, 65],
  [130, 67, 259],
  [29, 600, 47],
  [45, 100, 70],
  [40, 96, 50],
  [36, 1024, 40],
  [300, 20, 33],
];

test('quantizedMatmul matches the reference for int8 and nf4 (nested or not, 32/64 blocks) at every SIMD level', () => {
  for (const variant of ['int8', 'nf4', 'nf4-nested', 'nf4-32'] as const) {
    for (const [M, inF, outF] of SHAPES) {
      const ws = weights(variant, outF, inF, M + inF + outF);
      try {
        const Mb = Math.max(1, M - 1);
        const forward = productCase(ws, M, true, false);
        const gradient = productCase(ws, Mb, false, false);
        const accumulated = productCase(ws, M, true, true);
        forEachIsa((isa) => {
          const what = `${variant} ${isa} W=[${outF}, ${inF}]`;
          forward(`${what} M=${M} x·Wᵀ`);
          gradient(`${what} M=${Mb} dy·W`);
          accumulated(`${what} M=${M} x·Wᵀ accumulated`);
        });
      } finally {
        disposeAll(ws);
      }
    }
  }
});

test('quantizedMatmul gives the same result on 1, 2 and 3 threads', () => {
  for (const variant of ['int8', 'nf4-nested'] as const) {
    const ws = weights(variant, 300, 257, 5);
    try {
      const cases = ([[4, true], [4, false], [70, true], [70, false]] as const).map(([M, transW]) => ({ M, transW, check: productCase(ws, M, transW, false) }));
      for (const threads of [1, 3]) {
        withThreads(threads, () => {
          for (const { M, transW, check } of cases) check(`${variant} threads=${threads} M=${M} transW=${transW}`);
        });
      }
    } finally {
      disposeAll(ws);
    }
  }
});

test('dequantize matches the reference (bit for bit for nf4) at every SIMD level', () => {
  for (const variant of ['int8', 'nf4', 'nf4-nested', 'nf4-32'] as const) {
    for (const [rows, cols] of [[1, 1], [3, 7], [33, 65], [5, 300]]) {
      const ws = weights(variant, rows, cols, rows * cols);
      try {
        const expected = scope(() => values(dequantize(ws.get('reference')!)));
        forEachIsa((isa) => {
          for (const device of testBackends()) {
            const got = scope(() => values(dequantize(ws.get(device)!)));
            if (variant === 'int8') assertClose(got, expected, { atol: 0, rtol: 2e-7 }, `${variant} ${isa} [${rows}, ${cols}]`);
            else assert.deepEqual(got, expected, `${variant} ${isa} [${rows}, ${cols}]`);
          }
        });
      } finally {
        disposeAll(ws);
      }
    }
  }
});

test('load-time quantization kernels give bitsandbytes codes identical to the reference, from f32, bf16 and f16, at every SIMD level', () => {
  for (const dtype of ['f32', 'bf16', 'f16'] as const) {
    for (const [rows, cols] of [[1, 3], [7, 33], [4, 200], [13, 77], [3, 128]]) {
      const data = normalData(rows * cols, rows + cols, 0.5);
      data.fill(0, 0, Math.min(cols, 70)); // an all-zero row / block
      const run = (device: string) =>
        scope(() => {
          const w = tensor(data, [rows, cols], { device, dtype });
          const i8 = quantizeInt8(w);
          const n4 = quantizeNf4(w);
          const n4plain = quantizeNf4(w, { doubleQuant: false, blocksize: 32 });
          const r = [i8.cb, i8.scb, n4.packed, n4.absmax, n4.nested!.absmax, n4plain.packed, n4plain.absmax].map(values);
          const offset = n4.nested!.offset;
          for (const q of [i8, n4, n4plain]) q.dispose();
          return { r, offset };
        });
      const expected = run('reference');
      forEachIsa((isa) => {
        for (const device of testBackends()) {
          const got = run(device);
          assert.equal(got.offset, expected.offset, `${dtype} [${rows}, ${cols}] nested offset (${isa})`);
          got.r.forEach((g, i) => assert.deepEqual(g, expected.r[i], `${dtype} [${rows}, ${cols}] output ${i} on ${device} (${isa})`));
        }
      });
    }
  }
});

test('quantizeBlockwise against the dynamic map, unpacked, matches the host definition', () => {
  const x = normalData(1000, 4);
  const host = quantizeBlockwiseHost(x, dynamicMap(), 256);
  for (const device of DEVICES) {
    scope(() => {
      const q = tensor(new Uint8Array(1000), [1000], { device, dtype: 'uint8' });
      const absmax = tensor(new Float32Array(4), [4], { device });
      kernel(q.backend, 'quantizeBlockwise')(tensor(x, [1000], { device }), tensor(dynamicMap(), [256], { device }), q, absmax, 256, false);
      assert.deepEqual(Array.from(values(q)), Array.from(host.q), device);
      assert.deepEqual(Array.from(values(absmax)), Array.from(host.absmax), device);
    });
  }
});

test('quantizedLinear: forward equals linear on the dequantized weight, with bias, for rank 1, 2 and 3 inputs', () => {
  for (const variant of ['int8', 'nf4-nested'] as const) {
    const ws = weights(variant, 19, 70, 11);
    try {
      for (const device of DEVICES) {
        for (const shape of [[70], [5, 70], [2, 3, 70], [12, 70]]) {
          scope(() => {
            const w = ws.get(device)!;
            const x = tensor(randomData(shape.reduce((a, b) => a * b, 1), 2), shape, { device });
            const b = tensor(randomData(19, 3), [19], { device });
            const y = quantizedLinear(x, w, b);
            assert.deepEqual(y.shape, [...shape.slice(0, -1), 19]);
            assertClose(values(y), values(linear(x, dequantize(w), b)), { atol: 1e-5, rtol: 1e-5 }, `${variant} ${device} ${shape}`);
          });
        }
      }
    } finally {
      disposeAll(ws);
    }
  }
});

test('quantizedLinear: gradients of x and bias match finite differences; the weight gets none', () => {
  for (const variant of ['int8', 'nf4', 'nf4-nested'] as const) {
    const ws = weights(variant, 6, 13, 21);
    try {
      const f = (x: Tensor, b: Tensor) => quantizedLinear(x, ws.get(x.backend.name)!, b);
      gradcheck(f, [{ shape: [4, 13] }, { shape: [6] }]);
      gradcheck(f, [{ shape: [2, 3, 13], strided: true }, { shape: [6], noGrad: true }]);
      gradcheck((x: Tensor) => quantizedLinear(x, ws.get(x.backend.name)!), [{ shape: [13] }]);
      // The blocked paths (M > 32) too.
      gradcheck((x: Tensor) => quantizedLinear(x, ws.get(x.backend.name)!), [{ shape: [40, 13] }]);
      for (const device of DEVICES) {
        scope(() => {
          const w = ws.get(device)!;
          const x = tensor(randomData(26, 1), [2, 13], { device, requiresGrad: true });
          backward(quantizedLinear(x, w), tensor(randomData(12, 2), [2, 6], { device }));
          for (const t of w.tensors()) assert.equal(t.grad, null);
          assert.ok(x.grad !== null);
          x.grad.dispose();
        });
      }
    } finally {
      disposeAll(ws);
    }
  }
});

test('quantizedLinear records nothing under noGrad and refuses mismatched inputs', () => {
  const ws = weights('int8', 4, 8, 1);
  try {
    scope(() => {
      // the weight on the default device, where tensor() puts x; the reference is never the default
      const device = defaultBackend().name;
      const w = ws.get(device)!;
      const x = tensor(randomData(8, 1), [1, 8], { requiresGrad: true });
      assert.equal(noGrad(() => quantizedLinear(x, w)).gradFn, null);
      assert.throws(() => quantizedLinear(tensor(new Float32Array(7), [1, 7]), w), /has 7 features.*expects 8/);
      assert.throws(() => quantizedLinear(x, w, tensor(new Float32Array(3), [3])), /bias must be a floating \[4\], got f32 \[3\]/);
      assert.throws(() => quantizedLinear(tensor(new Float32Array(8), [1, 8], { device: 'reference' }), w), new RegExp(`x lives on reference, the quantized weight on ${device}`));
      assert.throws(() => quantizedLinear(tensor(new Int32Array(8), [1, 8], { dtype: 'int32' }), w), /x must be a floating tensor \(f32 or bf16\), got int32/);
    });
  } finally {
    disposeAll(ws);
  }
});

const bf = (xs: ArrayLike<number>) => Float64Array.from(xs, (v) => roundTo('bf16', v));

test('quantizedLinear in bf16 (reference): y and dx are bf16, each the f32 computation rounded once; the bias gradient stays f32', () => {
  for (const variant of ['int8', 'nf4-nested'] as const) {
    const ws = weights(variant, 19, 70, 31);
    try {
      scope(() => {
        const device = 'reference';
        const w = ws.get(device)!;
        const xData = bf(randomData(5 * 70, 4)), dyData = bf(randomData(5 * 19, 5)), bData = bf(randomData(19, 6));
        const run = (dtype: 'f32' | 'bf16', withBias: boolean) => {
          const x = tensor(xData, [5, 70], { device, dtype, requiresGrad: true });
          const b = withBias ? tensor(bData, [19], { device, requiresGrad: true }) : null;
          const y = quantizedLinear(x, w, b);
          backward(y, tensor(dyData, [5, 19], { device, dtype }));
          return { y, dx: x.grad!, db: b?.grad ?? null };
        };
        const exact = run('f32', false), lowered = run('bf16', false);
        assert.equal(lowered.y.dtype, 'bf16', `${variant}: y`);
        assert.equal(lowered.dx.dtype, 'bf16', `${variant}: dx`);
        // The reference accumulates in f64 and rounds each stored value once.
        assert.deepEqual(values(lowered.y), bf(values(exact.y)), `${variant}: y is the f32 product rounded once`);
        assert.deepEqual(values(lowered.dx), bf(values(exact.dx)), `${variant}: dx is the f32 product rounded once`);
        // With a bias: the bias is copied into the bf16 output (one rounding), the product added (another).
        const biased = run('bf16', true);
        assert.equal(biased.y.dtype, 'bf16');
        assert.deepEqual(values(biased.y), bf(values(exact.y).map((v, i) => roundTo('bf16', bData[i % 19]) + v)), `${variant}: y with bias`);
        assert.equal(biased.db!.dtype, 'f32', 'the f32 bias gets an f32 gradient');
        const dySums = Array.from({ length: 19 }, (_, j) => dyData.reduce((acc, v, i) => (i % 19 === j ? acc + v : acc), 0));
        assertClose(values(biased.db!), dySums, { atol: 2e-2, rtol: 1e-2 }, `${variant}: db (summed in bf16)`);
      });
    } finally {
      disposeAll(ws);
    }
  }
});

test('quantizedLinear with bf16 x on a backend without bf16 compute (cpu) widens x: f32 y and dx, equal to the f32 input', () => {
  const ws = weights('nf4', 6, 13, 41);
  try {
    scope(() => {
      const device = 'cpu';
      const w = ws.get(device)!;
      const xData = bf(randomData(3 * 13, 7)), dy = randomData(3 * 6, 8);
      const run = (dtype: 'f32' | 'bf16') => {
        const x = tensor(xData, [3, 13], { device, dtype, requiresGrad: true });
        const y = quantizedLinear(x, w);
        backward(y, tensor(dy, [3, 6], { device }));
        return { y, dx: x.grad! };
      };
      const a = run('f32'), b = run('bf16');
      assert.equal(b.y.dtype, 'f32');
      assert.equal(b.dx.dtype, 'f32');
      assert.deepEqual(values(b.y), values(a.y));
      assert.deepEqual(values(b.dx), values(a.dx));
    });
  } finally {
    disposeAll(ws);
  }
});

test('quantizedLinear in bf16 on each test backend that computes in bf16 matches the reference within bf16 rounding', { skip: testBackends().some((d) => computesBf16(getBackend(d))) ? false : 'no test backend computes in bf16 (cuda runs with FINLORA_DEVICE=cuda)' }, () => {
  const [OUT, IN] = [24, 136];
  for (const variant of ['int8', 'nf4-nested'] as const) {
    // 1 and 3 rows take a GPU's GEMV path, 40 its decode + GEMM path
    for (const M of [1, 3, 40]) {
      const ws = weights(variant, OUT, IN, 51);
      try {
        const xData = bf(randomData(M * IN, 9)), dyData = bf(randomData(M * OUT, 10));
        const run = (device: string) =>
          scope(() => {
            const x = tensor(xData, [M, IN], { device, dtype: 'bf16', requiresGrad: true });
            const y = quantizedLinear(x, ws.get(device)!);
            backward(y, tensor(dyData, [M, OUT], { device, dtype: 'bf16' }));
            assert.equal(y.dtype, 'bf16', device);
            assert.equal(x.grad!.dtype, 'bf16', device);
            return { y: values(y), dx: values(x.grad!) };
          });
        const ref = run('reference');
        // A GPU may decode W to bf16 for its tensor-core GEMM (at most 2^-9 relative per
        // value) and accumulates in f32: within 2^-8 of Σ|a|·|W| plus one rounding of the
        // output (2^-8 relative), as test/quant/cuda.test.ts bounds the kernel.
        const W = scope(() => values(dequantize(ws.get('reference')!))).map(Math.abs);
        const yBound = new Float64Array(M * OUT), dxBound = new Float64Array(M * IN);
        for (let m = 0; m < M; m++) {
          for (let o = 0; o < OUT; o++) {
            for (let i = 0; i < IN; i++) {
              yBound[m * OUT + o] += Math.abs(xData[m * IN + i]) * W[o * IN + i];
              dxBound[m * IN + i] += Math.abs(dyData[m * OUT + o]) * W[o * IN + i];
            }
          }
        }
        for (const device of testBackends().filter((d) => computesBf16(getBackend(d)))) {
          const got = run(device);
          for (const [what, g, want, bound] of [['y', got.y, ref.y, yBound], ['dx', got.dx, ref.dx, dxBound]] as const) {
            g.forEach((v, i) => {
              const tol = bound[i] * 2 ** -8 + Math.abs(want[i]) * 2 ** -8 + 1e-6;
              assert.ok(Math.abs(v - want[i]) <= tol, `${variant} M ${M} ${what}[${i}] on ${device}: ${v}, reference ${want[i]}, tolerance ${tol}`);
            });
          }
        }
      } finally {
        disposeAll(ws);
      }
    }
  }
});

test('NF4 decoding covers every code: a weight of all 16 codes dequantizes to the table times the block scale', () => {
  // byte i holds codes (2i mod 16, 2i+1 mod 16): elements run 0..15 in order.
  const packed = Uint8Array.from({ length: 40 }, (_, i) => (((2 * i) % 16) << 4) | ((2 * i + 1) % 16));
  const absmax = Float32Array.from([0.5, 2]);
  for (const device of DEVICES) {
    forEachIsa(() => {
      const w = Nf4Weight.fromHost({ shape: [5, 16], blocksize: 64, packed, code: NF4_CODE, absmax, nested: null }, { device });
      try {
        const got = scope(() => values(dequantize(w)));
        const expected = Array.from({ length: 80 }, (_, i) => Math.fround(NF4_CODE[i % 16] * absmax[Math.floor(i / 64)]));
        assert.deepEqual(Array.from(got), expected, device);
      } finally {
        w.dispose();
      }
    });
  }
});
