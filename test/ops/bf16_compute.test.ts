// The bf16 compute contract on the reference backend (which rounds every bf16 store, so
// CI covers it without a GPU): an op whose floating inputs are all bf16 returns bf16,
// and its gradients for bf16 inputs are bf16, while the tensors the contract keeps f32
// (rmsnorm's weight gradient for an f32 weight, the loss) are f32. Each op runs twice on
// the same values: bf16 inputs, and the same values as f32 inputs (the f64 path the
// other op tests check against finite differences). A single-kernel forward must equal
// the f32 result rounded once to bf16; gradients and composed ops agree within bf16
// tolerance. On the cpu backend (no bf16 compute) bf16 inputs still give f32. Also: the
// trailing activation-dtype int of every native kernel layout, and host reads of bf16.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { getBackend } from '../../src/backend/registry.js';
import { nativeKernels } from '../../src/backend/native_kernels.js';
import type { Kernels } from '../../src/backend/kernels.js';
import { add, div, maximum, mul, sub } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { indexSelect } from '../../src/ops/concat.js';
import { crossEntropy } from '../../src/ops/crossentropy.js';
import { dropout } from '../../src/ops/dropout.js';
import { embedding } from '../../src/ops/embedding.js';
import { linear, matmul } from '../../src/ops/matmul.js';
import { max, mean, sum } from '../../src/ops/reduce.js';
import { rmsNorm } from '../../src/ops/rmsnorm.js';
import { rope, rotaryTables } from '../../src/ops/rope.js';
import { attention } from '../../src/ops/attention.js';
import { logSoftmax, softmax } from '../../src/ops/softmax.js';
import { siluMul } from '../../src/ops/swiglu.js';
import { exp, rsqrt, silu, square } from '../../src/ops/unary.js';
import { computeDtype } from '../../src/ops/util.js';
import { expand, transpose } from '../../src/ops/view.js';
import { DTYPE_CODE, roundTo } from '../../src/tensor/dtype.js';
import { numel } from '../../src/tensor/shape.js';
import { empty, scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, randomData, values } from '../helpers.js';

type Dt = 'bf16' | 'f32' | 'int32';

interface Spec {
  shape: number[];
  /** bf16 (default): bf16 in the bf16 run, f32 in the f32 run; f32 and int32 stay as they are. */
  dtype?: Dt;
  data?: ArrayLike<number>;
  /** Gradient wanted (default: floating inputs). */
  grad?: boolean;
}

interface Run {
  dtype: string;
  y: Float64Array;
  grads: ({ dtype: string; values: Float64Array } | null)[];
}

/** Runs fn on `device` with inputs of the given mode and back-propagates a fixed bf16-valued output gradient. */
function run(device: string, mode: 'bf16' | 'f32', specs: Spec[], fn: (...xs: Tensor[]) => Tensor, seed: number): Run {
  return scope(() => {
    const xs = specs.map((s, i) => {
      const dt = s.dtype ?? 'bf16';
      const raw = s.data ?? randomData(numel(s.shape), seed * 31 + i);
      // Values representable in bf16, so both runs start from the same numbers.
      const data = dt === 'int32' ? raw : Float64Array.from(raw, (v) => roundTo('bf16', v));
      const dtype = dt === 'bf16' ? mode : dt;
      return tensor(data, s.shape, { device, dtype, requiresGrad: dt !== 'int32' && (s.grad ?? true) });
    });
    const y = fn(...xs);
    const gy = tensor(Float64Array.from(randomData(y.size, seed * 31 + 97), (v) => roundTo('bf16', v)), y.shape, { device, dtype: y.dtype });
    if (y.requiresGrad) backward(y, gy);
    return {
      dtype: y.dtype,
      y: values(y),
      grads: xs.map((x) => (x.grad === null ? null : { dtype: x.grad.dtype, values: values(x.grad) })),
    };
  });
}

interface Case {
  name: string;
  specs: Spec[];
  fn: (...xs: Tensor[]) => Tensor;
  /** The output dtype for bf16 inputs on the reference (default bf16). */
  out?: 'bf16' | 'f32';
  /** One kernel from the inputs: the bf16 output is the f32 one rounded once. */
  exact?: boolean;
}

function maxAbs(v: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i]));
  return m;
}

/** Within a few bf16 roundings of the f32 values, measured against the largest of them. */
function assertBf16Close(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, ulps = 4): void {
  const rel = ulps * 2 ** -8;
  assertClose(actual, expected, { atol: rel * maxAbs(expected) + 1e-30, rtol: rel }, what);
}

function check(c: Case, seed: number): void {
  const want = run('reference', 'f32', c.specs, c.fn, seed);
  const got = run('reference', 'bf16', c.specs, c.fn, seed);
  const out = c.out ?? 'bf16';
  assert.equal(want.dtype, 'f32', `${c.name}: f32 inputs give f32`);
  assert.equal(got.dtype, out, `${c.name}: output dtype for bf16 inputs`);
  // (f32 tensors on the reference hold f64 values: nothing to round there.)
  if (c.exact) assert.deepEqual(Array.from(got.y), Array.from(want.y, (v) => (out === 'bf16' ? roundTo('bf16', v) : v)), `${c.name}: the f32 result rounded once`);
  else assertBf16Close(got.y, want.y, `${c.name} forward`);
  c.specs.forEach((s, i) => {
    const g = got.grads[i], w = want.grads[i];
    if (w === null) {
      assert.equal(g, null, `${c.name}: input ${i} gets no gradient`);
      return;
    }
    assert.ok(g !== null, `${c.name}: input ${i} has a gradient`);
    // A tensor's gradient has its activation dtype: bf16 inputs bf16, f32 inputs f32.
    assert.equal(g.dtype, (s.dtype ?? 'bf16') === 'bf16' ? 'bf16' : 'f32', `${c.name}: gradient dtype of input ${i}`);
    assertBf16Close(g.values, w.values, `${c.name} gradient ${i}`, 6);
  });

  // The cpu backend computes in f32 only: the same bf16 inputs give f32 (rule 2).
  const cpu = run('cpu', 'bf16', c.specs, c.fn, seed);
  assert.equal(cpu.dtype, 'f32', `${c.name}: cpu computes in f32`);
  assertClose(cpu.y, want.y, { atol: 1e-5 * (1 + maxAbs(want.y)), rtol: 1e-4 }, `${c.name} cpu forward`);
  cpu.grads.forEach((g, i) => {
    if (g === null) return;
    assert.equal(g.dtype, 'f32', `${c.name}: cpu gradient ${i} is f32`);
    assertClose(g.values, want.grads[i]?.values ?? [], { atol: 1e-5 * (1 + maxAbs(want.grads[i]?.values ?? [])), rtol: 1e-3 }, `${c.name} cpu gradient ${i}`);
  });
}

const pos = (n: number, seed: number) => randomData(n, seed, 0.25, 2);

const CASES: Case[] = [
  { name: 'add (broadcast)', specs: [{ shape: [3, 5] }, { shape: [5] }], fn: add, exact: true },
  { name: 'sub', specs: [{ shape: [4, 3] }, { shape: [4, 3] }], fn: sub, exact: true },
  { name: 'mul (broadcast)', specs: [{ shape: [2, 3, 4] }, { shape: [3, 1] }], fn: mul, exact: true },
  { name: 'div', specs: [{ shape: [3, 4] }, { shape: [3, 4], data: pos(12, 1) }], fn: div, exact: true },
  { name: 'maximum', specs: [{ shape: [5, 3] }, { shape: [5, 3] }], fn: maximum, exact: true },
  { name: 'mul by a number', specs: [{ shape: [4, 4] }], fn: (x) => mul(x, 2.5), exact: true },
  { name: 'exp', specs: [{ shape: [3, 7] }], fn: exp, exact: true },
  { name: 'silu', specs: [{ shape: [3, 7] }], fn: silu, exact: true },
  { name: 'rsqrt', specs: [{ shape: [2, 9], data: pos(18, 2) }], fn: rsqrt, exact: true },
  { name: 'square', specs: [{ shape: [6] }], fn: square, exact: true },
  { name: 'sum over an axis', specs: [{ shape: [4, 33] }], fn: (x) => sum(x, -1), exact: true },
  { name: 'sum over two axes', specs: [{ shape: [3, 4, 5] }], fn: (x) => sum(x, [0, 2]), exact: true },
  { name: 'mean', specs: [{ shape: [5, 6] }], fn: (x) => mean(x, 0) },
  { name: 'max', specs: [{ shape: [5, 6] }], fn: (x) => max(x, 1), exact: true },
  { name: 'expand (sumTo backward)', specs: [{ shape: [1, 3, 1] }], fn: (x) => mul(expand(x, [4, 3, 5]), 1), exact: true },
  { name: 'indexSelect with repeated ids', specs: [{ shape: [5, 3] }], fn: (x) => mul(indexSelect(x, 0, [1, 3, 1, 1]), 1), exact: true },
  { name: 'softmax', specs: [{ shape: [3, 10] }], fn: (x) => softmax(x), exact: true },
  { name: 'logSoftmax over axis 0', specs: [{ shape: [6, 4] }], fn: (x) => logSoftmax(x, 0), exact: true },
  { name: 'matmul', specs: [{ shape: [2, 4, 6] }, { shape: [6, 3] }], fn: (a, b) => matmul(a, b), exact: true },
  { name: 'matmul transposed, batched', specs: [{ shape: [3, 5, 4] }, { shape: [3, 7, 5] }], fn: (a, b) => matmul(a, b, { transA: true, transB: true }), exact: true },
  { name: 'matmul of a transposed view', specs: [{ shape: [6, 4] }, { shape: [6, 5] }], fn: (a, b) => matmul(transpose(a), b), exact: true },
  // A bf16 activation times an f32 weight (a LoRA A) widens: the product is f32.
  { name: 'matmul bf16 x f32', specs: [{ shape: [3, 8] }, { shape: [8, 2], dtype: 'f32' }], fn: (a, b) => matmul(a, b), out: 'f32', exact: true },
  { name: 'linear with bias', specs: [{ shape: [2, 3, 8] }, { shape: [5, 8] }, { shape: [5] }], fn: linear },
  { name: 'rmsNorm, bf16 weight', specs: [{ shape: [4, 16] }, { shape: [16] }], fn: (x, w) => rmsNorm(x, w, 1e-5), exact: true },
  { name: 'rmsNorm, f32 weight', specs: [{ shape: [3, 24] }, { shape: [24], dtype: 'f32' }], fn: (x, w) => rmsNorm(x, w, 1e-5), exact: true },
  {
    name: 'rope',
    specs: [{ shape: [2, 3, 2, 8] }],
    fn: (x) => {
      const { cos, sin } = rotaryTables(Float64Array.from([1, 0.3, 0.05, 0.01]), Int32Array.from([0, 5, 9]), { device: x.backend });
      return rope(x, cos, sin);
    },
    exact: true,
  },
  {
    name: 'attention (GQA, causal, key mask)',
    specs: [{ shape: [2, 4, 3, 8] }, { shape: [2, 2, 5, 8] }, { shape: [2, 2, 5, 8] }, { shape: [2, 5], dtype: 'f32', data: [1, 1, 1, 1, 1, 0, 1, 1, 1, 1], grad: false }],
    fn: (q, k, v, m) => attention(q, k, v, { causal: true, keyMask: m }),
    exact: true,
  },
  {
    name: 'crossEntropy (none)',
    specs: [{ shape: [4, 11] }, { shape: [4], dtype: 'int32', data: [3, -100, 10, 0] }],
    fn: (l, t) => crossEntropy(l, t, { reduction: 'none' }),
    out: 'f32',
    exact: true,
  },
  { name: 'crossEntropy (mean)', specs: [{ shape: [5, 7] }, { shape: [5], dtype: 'int32', data: [1, 2, 3, 4, 5] }], fn: (l, t) => crossEntropy(l, t), out: 'f32' },
  { name: 'dropout', specs: [{ shape: [6, 9] }], fn: (x) => dropout(x, 0.25, { seed: 7, offset: 100 }), exact: true },
  { name: 'siluMul', specs: [{ shape: [3, 10] }, { shape: [3, 10] }], fn: siluMul, exact: true },
];

for (const [i, c] of CASES.entries()) {
  test(`bf16 compute: ${c.name}`, () => check(c, i + 1));
}

test('bf16 compute: an embedding made in bf16 gathers rounded rows; the table gradient stays f32', () => {
  for (const device of ['reference', 'cpu']) {
    scope(() => {
      const be = getBackend(device);
      const table = tensor(randomData(10 * 6, 3), [10, 6], { device, requiresGrad: true });
      const ids = tensor([4, 0, 9, 4], [2, 2], { dtype: 'int32', device });
      if (device === 'cpu') {
        assert.throws(() => embedding(ids, table, 'bf16'), /embedding: backend 'cpu' does not compute in bf16/);
        return;
      }
      assert.equal(computeDtype(be, ids), 'f32', 'integer inputs alone do not make an op bf16');
      const y = embedding(ids, table, 'bf16');
      assert.equal(y.dtype, 'bf16');
      const t = values(table);
      const want = [4, 0, 9, 4].flatMap((id) => Array.from(t.subarray(id * 6, id * 6 + 6), (v) => roundTo('bf16', v)));
      assert.deepEqual(Array.from(values(y)), want);
      const gy = tensor(Float64Array.from(randomData(24, 4), (v) => roundTo('bf16', v)), y.shape, { device, dtype: 'bf16' });
      backward(y, gy);
      assert.ok(table.grad !== null);
      assert.equal(table.grad.dtype, 'f32');
      const g = values(gy), dw = new Float64Array(60);
      [4, 0, 9, 4].forEach((id, i) => {
        for (let d = 0; d < 6; d++) dw[id * 6 + d] += g[i * 6 + d];
      });
      assertClose(values(table.grad), dw, { atol: 1e-12, rtol: 0 }, 'table gradient');
      table.grad.dispose();
    });
  }
});

test('bf16 compute: the rule (all floating inputs bf16, on a backend that lists bf16)', () => {
  scope(() => {
    const ref = getBackend('reference'), cpu = getBackend('cpu');
    const b = (device: string) => empty([2], 'bf16', getBackend(device));
    const f = empty([2], 'f32', ref), i = empty([2], 'int32', ref);
    assert.equal(computeDtype(ref, b('reference'), b('reference')), 'bf16');
    assert.equal(computeDtype(ref, b('reference'), i), 'bf16');
    assert.equal(computeDtype(ref, b('reference'), f), 'f32');
    assert.equal(computeDtype(cpu, b('cpu')), 'f32');
    assert.equal(computeDtype(ref), 'f32');
  });
});

test('bf16 compute: host reads decode bf16 on every backend', () => {
  const exact = [1.5, -2.25, 3.140625, 0, -0, 65280, 2 ** -20, Infinity, -Infinity];
  for (const device of ['reference', 'cpu', ...(process.env.FINLORA_DEVICE === 'cuda' ? ['cuda'] : [])]) {
    scope(() => {
      const t = tensor(exact, [exact.length], { dtype: 'bf16', device });
      assert.deepEqual(Array.from(t.toArray()), exact, device);
      // Values that need rounding come back rounded to nearest even.
      const r = tensor([1 + 2 ** -9, 1 + 3 * 2 ** -9, 1 / 3], [3], { dtype: 'bf16', device });
      assert.deepEqual(Array.from(r.toArray()), [1, 1 + 2 ** -7, roundTo('bf16', 1 / 3)], device);
      assert.ok(Number.isNaN(tensor([NaN], [1], { dtype: 'bf16', device }).item()), device);
      // A bf16 result computed on the device reads back as the value it holds.
      const y = add(tensor([1, 2], [2], { dtype: 'bf16', device }), tensor([0.5, 0.25], [2], { dtype: 'bf16', device }));
      assert.deepEqual(Array.from(y.toArray()), [1.5, 2.25], device);
    });
  }
});

test('bf16 compute: every activation kernel takes the dtype code of T as its last int', () => {
  const ref = getBackend('reference');
  const calls: { name: string; ints: number[] }[] = [];
  const k: Kernels = nativeKernels((name, _tensors, ints) => calls.push({ name, ints: [...ints] }), { stridedAttention: false });
  const last = (): number[] => calls[calls.length - 1].ints;
  for (const dt of ['f32', 'bf16'] as const) {
    scope(() => {
      const code = DTYPE_CODE[dt];
      const t = (shape: number[], dtype: 'f32' | 'bf16' | 'int32' = dt) => empty(shape, dtype, ref);
      const x = t([4, 8]), out = t([4, 8]);
      const expectLast = (name: string, call: () => void, before?: number[]) => {
        call();
        const ints = last();
        assert.equal(calls[calls.length - 1].name, name);
        assert.equal(ints[ints.length - 1], code, `${name} (${dt}): trailing dtype code`);
        if (before !== undefined) assert.deepEqual(ints.slice(0, -1), before, `${name} (${dt}): the ints before it are unchanged`);
      };
      expectLast('unary', () => k.unary('exp', x, out), [1, 32]);
      expectLast('binary', () => k.binary('mul', x, x, out));
      expectLast('reduce', () => k.reduce('sum', x, t([4, 1]), { outer: 4, n: 8, inner: 1 }), [0, 4, 8, 1]);
      expectLast('softmax', () => k.softmax(x, out, true), [4, 8, 1]);
      // The weight's own dtype code (f32 here, bf16 below) comes before T's.
      expectLast('rmsnorm', () => k.rmsnorm(x, t([8], 'f32'), out, t([4], 'f32'), 1e-5), [4, 8, DTYPE_CODE.f32]);
      expectLast('rmsnormBackward', () => k.rmsnormBackward(x, t([8], 'f32'), t([4], 'f32'), x, out, t([8], 'f32')), [4, 8, DTYPE_CODE.f32]);
      expectLast('rmsnorm', () => k.rmsnorm(x, t([8], 'bf16'), out, t([4], 'f32'), 1e-5), [4, 8, DTYPE_CODE.bf16]);
      expectLast('rmsnormBackwardDx', () => k.rmsnormBackwardDx(x, t([8], 'f32'), t([4], 'f32'), x, out, true), [4, 8, DTYPE_CODE.f32, 1]);
      const q = t([1, 2, 3, 4]);
      expectLast('rope', () => k.rope(q, t([1, 2, 2], 'f32'), t([1, 2, 2], 'f32'), t([1, 2, 3, 4]), false), [1, 2, 3, 4, 0, 0]);
      const qa = t([1, 2, 3, 4]), kv = t([1, 1, 5, 4]), lse = t([1, 2, 3], 'f32');
      expectLast('attention', () => k.attention(qa, kv, kv, null, t([1, 2, 3, 4]), lse, { scale: 0.5, causal: true }), [1, 2, 1, 3, 5, 4, 1, 0]);
      expectLast('attentionBackward', () => k.attentionBackward(qa, kv, kv, null, qa, lse, qa, t([1, 2, 3, 4]), t([1, 1, 5, 4]), t([1, 1, 5, 4]), { scale: 0.5, causal: true }), [1, 2, 1, 3, 5, 4, 1, 0]);
      const targets = t([4], 'int32');
      expectLast('crossEntropy', () => k.crossEntropy(x, targets, t([4], 'f32'), t([4], 'f32'), -100), [4, 8, -100]);
      expectLast('crossEntropyBackward', () => k.crossEntropyBackward(x, targets, t([4], 'f32'), t([4], 'f32'), out, -100), [4, 8, -100]);
      expectLast('scatterAdd', () => k.scatterAdd(x, targets, t([10, 8], 'f32')), [10, 8, 4]);
      // gather: the table's own code stays, then T (the output's).
      expectLast('gather', () => k.gather(t([10, 8], 'bf16'), targets, out), [10, 8, 4, DTYPE_CODE.bf16]);
      // matmul: dtypeB stays at its place, then T (a's and out's).
      expectLast('matmul', () => k.matmul(t([4, 6]), t([6, 8], 'bf16'), out, { transA: false, transB: false, alpha: 1, accumulate: false }), [1, 4, 8, 6, 0, 6, 1, 0, 8, 1, 0, DTYPE_CODE.bf16]);
      expectLast('dropout', () => k.dropout(x, out, 0.1, 3, 0), [32, 3, 0]);
      expectLast('dropoutAdd', () => k.dropoutAdd(x, out, 0.1, 3, 0), [32, 3, 0]);
      expectLast('siluMul', () => k.siluMul(x, x, out), [32]);
      expectLast('siluMulBackward', () => k.siluMulBackward(x, x, x, out, t([4, 8])), [32]);
      expectLast('doraScale', () => k.doraScale(x, x, t([8], 'f32'), out, 2), [4, 8]);
      expectLast('doraScaleBackward', () => k.doraScaleBackward(x, x, t([8], 'f32'), x, out, t([4, 8]), t([8], 'f32'), 2), [4, 8]);
      const scb = t([8], 'f32');
      const w = { format: 'int8' as const, rows: 8, cols: 6, cb: empty([8, 6], 'int8', ref), scb };
      expectLast('quantizedMatmul', () => k.quantizedMatmul(t([4, 6]), w, out, { transW: true, accumulate: false }), [0, 4, 8, 6, 1, 0, 0, 0, 0]);
      // Kernels that are f32 whatever T is keep their layouts.
      k.dropoutMask(t([8], 'f32'), 0.1, 3, 0);
      assert.deepEqual(last(), [8, 3, 0]);
    });
  }
});
