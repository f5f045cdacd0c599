// matmul and linear: the cpu GEMM kernel against the f64 reference on odd shapes,
// transposed, strided and broadcast operands, alpha/accumulate, bf16 b, every SIMD
// level and thread count; gradients against finite differences.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kernel } from '../../src/backend/backend.js';
import { CpuBackend } from '../../src/backend/cpu/cpu.js';
import type { MatmulAttrs } from '../../src/backend/kernels.js';
import { backward } from '../../src/autograd/tape.js';
import { add } from '../../src/ops/binary.js';
import { ones, tensor } from '../../src/ops/creation.js';
import { linear, matmul } from '../../src/ops/matmul.js';
import { clone, permute, slice } from '../../src/ops/view.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, getBackend, gradcheck, randomData } from '../helpers.js';

const loose = { atol: 1e-4, rtol: 1e-4 };

function cpu(): CpuBackend {
  const b = getBackend('cpu');
  assert.ok(b instanceof CpuBackend);
  return b;
}

/** Runs the kernel directly: out = alpha * op(a) op(b) (+ c when accumulate). */
function direct(attrs: MatmulAttrs) {
  return (a: Tensor, b: Tensor, c: Tensor): Tensor => {
    const out = clone(c);
    kernel(a.backend, 'matmul')(a, b, out, attrs);
    return out;
  };
}

// [M, K, N]: tiny, odd, not multiples of any micro-tile (14x32, 6x16, 4x8), K past
// one kc block (512 or 256), M past one mc block, N past one nc block (4096).
const shapes: [number, number, number][] = [
  [1, 1, 1],
  [3, 5, 7],
  [17, 33, 65],
  [130, 67, 259],
  [29, 600, 47],
  [300, 20, 33],
  [2, 3, 4100],
  // a narrow side (N or M <= 16) with K >= 64: dot products along K on AVX-512
  [37, 300, 8],
  [5, 70, 16],
  [4, 65, 1],
  [2, 100, 13],
  [8, 100, 70],
  [16, 64, 33],
];

function checkShapes(label: string): void {
  for (const [M, K, N] of shapes) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const sa = transA ? [K, M] : [M, K];
        const sb = transB ? [N, K] : [K, N];
        const what = `${label} ${M}x${K}x${N} transA=${transA} transB=${transB}`;
        try {
          checkAgainstReference((a, b) => matmul(a, b, { transA, transB }), [{ shape: sa }, { shape: sb }], loose);
        } catch (e) {
          throw new Error(`${what}: ${(e as Error).message}`);
        }
      }
    }
  }
}

test('matmul matches the reference on odd shapes with every transposition', () => {
  checkShapes('default');
});

test('each SIMD level matches the reference (levels the CPU lacks are reported and skipped)', (t) => {
  const be = cpu();
  const order = ['scalar', 'avx2', 'avx512'] as const;
  const saved = be.isa.current;
  const best = order.indexOf(be.isa.best as (typeof order)[number]);
  try {
    for (const level of order) {
      if (order.indexOf(level) > best) {
        t.diagnostic(`skipped ${level}: this CPU's best level is ${be.isa.best}`);
        continue;
      }
      be.setIsa(level);
      assert.equal(be.isa.current, level);
      checkShapes(level);
      checkAgainstReference(direct({ transA: false, transB: true, alpha: -0.75, accumulate: true }), [
        { shape: [19, 41] },
        { shape: [37, 41], dtype: 'bf16' },
        { shape: [19, 37] },
      ], loose);
    }
  } finally {
    be.setIsa(saved as (typeof order)[number]);
  }
});

test('kernel: alpha and accumulate, batch stride 0, bf16 b', () => {
  for (const accumulate of [false, true]) {
    for (const alpha of [1, 0.5, -2]) {
      checkAgainstReference(direct({ transA: false, transB: false, alpha, accumulate }), [
        { shape: [3, 13, 21] },
        { shape: [21, 9] },
        { shape: [3, 13, 9] },
      ], loose);
      checkAgainstReference(direct({ transA: true, transB: true, alpha, accumulate }), [
        { shape: [21, 13] },
        { shape: [2, 9, 21], dtype: 'bf16' },
        { shape: [2, 13, 9] },
      ], loose);
      // narrow b (the dot-product path on AVX-512), shared or batched
      checkAgainstReference(direct({ transA: false, transB: false, alpha, accumulate }), [
        { shape: [3, 13, 80] },
        { shape: [80, 9], dtype: 'bf16' },
        { shape: [3, 13, 9] },
      ], loose);
      checkAgainstReference(direct({ transA: false, transB: true, alpha, accumulate }), [
        { shape: [3, 13, 80] },
        { shape: [3, 9, 80] },
        { shape: [3, 13, 9] },
      ], loose);
      // a few rows against a Linear-layout weight, f32 or bf16, shared or batched
      checkAgainstReference(direct({ transA: false, transB: true, alpha, accumulate }), [
        { shape: [3, 5, 90] },
        { shape: [40, 90], dtype: 'bf16' },
        { shape: [3, 5, 40] },
      ], loose);
      checkAgainstReference(direct({ transA: true, transB: true, alpha, accumulate }), [
        { shape: [3, 90, 5] },
        { shape: [3, 40, 90] },
        { shape: [3, 5, 40] },
      ], loose);
      // large enough for threads: row slabs sharing packed bf16 B, column slabs sharing packed A
      checkAgainstReference(direct({ transA: false, transB: true, alpha, accumulate }), [
        { shape: [300, 200] },
        { shape: [100, 200], dtype: 'bf16' },
        { shape: [300, 100] },
      ], loose);
      checkAgainstReference(direct({ transA: false, transB: false, alpha, accumulate }), [
        { shape: [100, 200] },
        { shape: [200, 300], dtype: 'bf16' },
        { shape: [100, 300] },
      ], loose);
      // a batch of one broadcasts over the output's batch
      checkAgainstReference(direct({ transA: false, transB: false, alpha, accumulate }), [
        { shape: [1, 13, 21] },
        { shape: [3, 21, 9] },
        { shape: [3, 13, 9] },
      ], loose);
    }
  }
});

test('kernel: operands with no unit stride are packed correctly', () => {
  // Every other column of a wider matrix: strides (2 * cols, 2).
  const everyOther = (x: Tensor) => slice(x, -1, 0, undefined, 2);
  checkAgainstReference(
    (a, b, c) => direct({ transA: false, transB: false, alpha: 1, accumulate: false })(everyOther(a), everyOther(b), c),
    [{ shape: [23, 2 * 31] }, { shape: [31, 2 * 45] }, { shape: [23, 45] }],
    loose,
  );
  checkAgainstReference(
    (a, b, c) => direct({ transA: true, transB: true, alpha: 1, accumulate: true })(everyOther(a), everyOther(b), c),
    [{ shape: [31, 2 * 23] }, { shape: [45, 2 * 31], dtype: 'bf16' }, { shape: [23, 45] }],
    loose,
  );
  // ... and through the op, which copies such an operand to meet the kernel contract.
  checkAgainstReference((a, b) => matmul(everyOther(a), b), [{ shape: [5, 2, 2 * 7] }, { shape: [7, 3] }], loose);
});

test('matmul: strided views, batch broadcasting, folded and looped batches', () => {
  // [op(a) shape, op(b) shape, transA, transB]; transposed operands are stored swapped.
  const cases: [number[], number[], boolean, boolean][] = [
    [[4, 9, 7], [7, 5], false, false], // folds into one [36, 7] x [7, 5] GEMM
    [[4, 9, 7], [7, 5], true, true],
    [[2, 3, 9, 7], [1, 7, 5], false, false],
    [[9, 7], [3, 7, 5], false, false],
    [[2, 1, 9, 7], [3, 7, 5], false, true],
    [[2, 1, 9, 7], [1, 3, 7, 5], true, true],
    [[1, 9, 7], [7, 5], false, false],
  ];
  for (const [sa, sb, transA, transB] of cases) {
    const as = transA ? [...sa.slice(0, -2), sa[sa.length - 1], sa[sa.length - 2]] : sa;
    const bs = transB ? [...sb.slice(0, -2), sb[sb.length - 1], sb[sb.length - 2]] : sb;
    for (const strided of [false, true]) {
      checkAgainstReference((a, b) => matmul(a, b, { transA, transB }), [{ shape: as, strided }, { shape: bs, strided: !strided }], loose);
    }
  }
  // Batch dims whose strides do not flatten (a permuted batch, b broadcast on one of two
  // dims): the op loops over the leading dim.
  checkAgainstReference((x, b) => matmul(permute(x, [1, 0, 2, 3]), b), [{ shape: [3, 2, 6, 5] }, { shape: [2, 1, 5, 4] }], loose);
  checkAgainstReference((a, b) => matmul(a, b), [{ shape: [5, 13, 11] }, { shape: [5, 11, 9], dtype: 'bf16' }], loose);
});

test('matmul: empty and K = 0 products', () => {
  checkAgainstReference((a, b) => matmul(a, b), [{ shape: [3, 0] }, { shape: [0, 4] }]);
  checkAgainstReference((a, b) => matmul(a, b), [{ shape: [0, 5] }, { shape: [5, 4] }]);
  checkAgainstReference((a, b) => matmul(a, b), [{ shape: [2, 0, 3, 5] }, { shape: [5, 4] }]);
});

test('multithreaded and single-threaded GEMM give identical results on every SIMD level', () => {
  // Threads split the output, never a dot product, so the sums are bit-identical.
  const be = cpu();
  const threads = be.numThreads;
  if (threads < 2) return;
  const saved = be.isa.current;
  const order = ['scalar', 'avx2', 'avx512'] as const;
  const best = order.indexOf(be.isa.best as (typeof order)[number]);
  // A multiplicative hash instead of the seeded generator: the largest cases need 4.5M values.
  const data = (n: number, seed: number) => {
    const d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = (Math.imul(i + seed, 0x9e3779b1) >>> 8) / 2 ** 24 - 0.5;
    return d;
  };
  const cases: [number, number, number, number, boolean][] = [
    [257, 300, 333, 1, false], // column slabs sharing packed A
    [333, 300, 257, 1, true], // row slabs sharing packed B
    [512, 256, 8, 1, true], // LoRA-like N = 8: row slabs
    [8, 512, 2048, 1, false], // a few rows, many columns
    [45, 300, 130, 3, true], // an odd batch: each product split in turn
    [40, 300, 70, 5, false], // a larger batch: whole products per thread
    [290, 15000, 300, 1, false], // packed A over 16 MiB: two depth bands
    [300, 15000, 290, 1, false], // packed B over 16 MiB: two depth bands
    [7900, 512, 2100, 1, false], // packed A in two row bands
  ];
  try {
    for (const [M, K, N, batch, transB] of cases) {
      scope(() => {
        const a = tensor(data(batch * M * K, 5), [batch, M, K], { device: be });
        const b = tensor(data(K * N, 6), transB ? [N, K] : [K, N], { device: be });
        const run = (n: number) => {
          be.setNumThreads(n);
          return scope(() => Float32Array.from(matmul(a, b, { transB }).toArray()));
        };
        for (const level of order.slice(0, best + 1)) {
          if (level === 'scalar' && (K > 1000 || M * N > 1e7)) continue; // slow there, and nothing level-specific
          be.setIsa(level);
          assert.deepEqual(run(threads), run(1), `${level} ${batch}x${M}x${K}x${N}`);
        }
      });
    }
  } finally {
    be.setNumThreads(threads);
    be.setIsa(saved as (typeof order)[number]);
  }
});

test('matmul and linear name the shapes that do not fit', () => {
  scope(() => {
    const a = tensor(randomData(6, 1), [2, 3]);
    const b = tensor(randomData(8, 2), [4, 2]);
    assert.throws(() => matmul(a, b), /matmul: inner dimensions differ: a \[2, 3\] has K = 3, b \[4, 2\] has K = 4/);
    assert.throws(() => matmul(a, tensor([1, 2, 3], [3])), /matmul: operands must have rank >= 2/);
    assert.throws(
      () => matmul(tensor(randomData(24, 3), [2, 4, 3]), tensor(randomData(18, 3), [3, 3, 2])),
      /matmul: batch dimensions of a \[2, 4, 3\] and b \[3, 3, 2\] cannot be broadcast/,
    );
    assert.throws(() => matmul(tensor([1, 2], [1, 2], { dtype: 'f16' }), tensor([1, 2], [2, 1])), /matmul: a must be f32 or bf16, got f16/);
    assert.throws(() => linear(a, tensor(randomData(8, 2), [2, 4])), /linear: x \[2, 3\] has 3 features, weight \[2, 4\] expects 4/);
    assert.throws(() => linear(a, tensor(randomData(6, 2), [2, 3]), tensor([1], [1])), /linear: bias must be \[2\]/);
  });
});

test('linear matches matmul with the weight transposed, plus the bias', () => {
  checkAgainstReference((x, w, bias) => linear(x, w, bias), [{ shape: [2, 5, 7] }, { shape: [9, 7] }, { shape: [9] }], loose);
  checkAgainstReference((x, w) => linear(x, w), [{ shape: [3, 7], strided: true }, { shape: [9, 7], dtype: 'bf16' }], loose);
  checkAgainstReference((x, w, bias) => linear(x, w, bias), [{ shape: [7] }, { shape: [4, 7] }, { shape: [4] }], loose);
  scope(() => {
    const x = tensor(randomData(10, 1), [2, 5]);
    const w = tensor(randomData(15, 2), [3, 5]);
    const bias = tensor([1, -2, 0.5], [3]);
    const y = linear(x, w, bias).toArray();
    const xv = x.toArray(), wv = w.toArray();
    const expected: number[] = [];
    for (let i = 0; i < 2; i++) {
      for (let o = 0; o < 3; o++) {
        let s = bias.toArray()[o];
        for (let k = 0; k < 5; k++) s += xv[i * 5 + k] * wv[o * 5 + k];
        expected.push(s);
      }
    }
    assertClose(y, expected);
  });
});

test('matmul gradients match finite differences', () => {
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      gradcheck((a, b) => matmul(a, b, { transA, transB }), [{ shape: transA ? [4, 3] : [3, 4] }, { shape: transB ? [5, 4] : [4, 5] }]);
    }
  }
  // broadcast batch dims on both sides
  gradcheck((a, b) => matmul(a, b), [{ shape: [2, 1, 3, 4] }, { shape: [3, 4, 2] }]);
  gradcheck((a, b) => matmul(a, b, { transA: true, transB: true }), [{ shape: [1, 3, 4, 3], strided: true }, { shape: [2, 1, 2, 4] }]);
  // b without a batch: its gradient is one GEMM over every row
  gradcheck((a, b) => matmul(a, b), [{ shape: [2, 3, 4] }, { shape: [4, 5] }]);
  gradcheck((a, b) => matmul(a, b, { transA: true, transB: true }), [{ shape: [2, 4, 3] }, { shape: [5, 4] }]);
  // a without a batch, b batched
  gradcheck((a, b) => matmul(a, b), [{ shape: [3, 4] }, { shape: [2, 4, 5], strided: true }]);
  // frozen bf16 b: only a gets a gradient (through the transposed-view path with transA)
  gradcheck((a, b) => matmul(a, b, { transA: true }), [{ shape: [2, 4, 3] }, { shape: [4, 5], dtype: 'bf16', noGrad: true }]);
  gradcheck((a, b) => matmul(a, b, { transB: true }), [{ shape: [3, 4] }, { shape: [5, 4], dtype: 'bf16', noGrad: true }]);
});

test('linear gradients match finite differences', () => {
  gradcheck((x, w, bias) => linear(x, w, bias), [{ shape: [2, 3, 4] }, { shape: [5, 4] }, { shape: [5] }]);
  gradcheck((x, w) => linear(x, w), [{ shape: [3, 4], strided: true }, { shape: [5, 4] }]);
  gradcheck((x, w, bias) => linear(x, w, bias), [{ shape: [4] }, { shape: [2, 4] }, { shape: [2] }]);
  gradcheck((x, w) => linear(x, w), [{ shape: [2, 3, 4] }, { shape: [5, 4], dtype: 'bf16', noGrad: true }]);
});

test('a scope frees every temporary of forward and backward', () => {
  const be = cpu();
  const before = be.liveBytes();
  scope(() => {
    const x = tensor(randomData(2 * 3 * 4, 1), [2, 3, 4], { requiresGrad: true });
    const w = tensor(randomData(20, 2), [5, 4], { requiresGrad: true });
    const v = tensor(randomData(25, 3), [5, 5], { requiresGrad: true });
    const x1 = tensor(randomData(4, 4), [4], { requiresGrad: true });
    const bias = tensor(randomData(5, 5), [5], { requiresGrad: true });
    const y = add(matmul(linear(x, w), v, { transB: true }), linear(x1, w, bias));
    backward(y, ones(y.shape));
    assert.ok(x.grad !== null && w.grad !== null && v.grad !== null && x1.grad !== null && bias.grad !== null);
  });
  assert.equal(be.liveBytes(), before);
});
