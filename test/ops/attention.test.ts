import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward, noGrad } from '../../src/autograd/tape.js';
import { kernel } from '../../src/backend/backend.js';
import type { AttentionDims } from '../../src/backend/reference/nn.js';
import { attention, type AttentionOptions } from '../../src/ops/attention.js';
import { tensor } from '../../src/ops/creation.js';
import { empty, scope, type Tensor, view } from '../../src/tensor/tensor.js';
import { slice, transpose } from '../../src/ops/view.js';
import { contiguousStrides } from '../../src/tensor/shape.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { assertClose, checkAgainstReference, getBackend, gradcheck, type InputSpec, randomData, testBackends, values, withReferenceAs } from '../helpers.js';
import { forEachIsa } from './isa_levels.js';
import { withThreads } from './nn_helpers.js';

interface Case extends AttentionDims {
  causal: boolean;
  /** keyMask rows (0 = hidden), or none */
  mask?: number[][];
  strided?: boolean;
}

const cases: Case[] = [
  { B: 2, Hq: 4, Hkv: 2, T: 5, S: 7, D: 24, causal: true },
  { B: 1, Hq: 3, Hkv: 3, T: 9, S: 9, D: 64, causal: false, mask: [[1, 1, 0, 1, 1, 1, 0, 1, 1]], strided: true },
  // a decode step: one query at the end of 13 positions, left padding in batch 1
  { B: 2, Hq: 4, Hkv: 2, T: 1, S: 13, D: 24, causal: true, mask: [Array(13).fill(1), [0, 0, 0, ...Array(10).fill(1)]] },
  // several key tiles, the last one partial, and query blocks on the diagonal
  { B: 1, Hq: 2, Hkv: 1, T: 150, S: 150, D: 64, causal: true },
  { B: 1, Hq: 4, Hkv: 1, T: 40, S: 133, D: 17, causal: false, strided: true },
  // more queries than keys: the first rows see nothing; batch 1 has every key masked
  { B: 2, Hq: 2, Hkv: 2, T: 6, S: 4, D: 8, causal: true, mask: [[1, 1, 1, 1], [0, 0, 0, 0]] },
];

function specs(c: Case): InputSpec[] {
  const s: InputSpec[] = [
    { shape: [c.B, c.Hq, c.T, c.D], strided: c.strided },
    { shape: [c.B, c.Hkv, c.S, c.D] },
    { shape: [c.B, c.Hkv, c.S, c.D], strided: c.strided },
  ];
  if (c.mask) s.push({ shape: [c.B, c.S], data: c.mask.flat(), noGrad: true });
  return s;
}

const attend = (c: Case, scale?: number) => (q: Tensor, k: Tensor, v: Tensor, mask?: Tensor) => {
  const opts: AttentionOptions = { causal: c.causal, keyMask: mask ?? null };
  if (scale !== undefined) opts.scale = scale;
  return attention(q, k, v, opts);
};

test('attention: matches a plain T x S softmax (GQA, T != S, causal, key mask, odd D, decode), at every SIMD level', () => {
  forEachIsa(() => {
    // a scale of 3/sqrt(D) makes the softmax far from uniform
    for (const c of cases) checkAgainstReference(attend(c, 3 / Math.sqrt(c.D)), specs(c), { atol: 2e-5, rtol: 1e-4 });
  });
});

test('attention: the flash backward kernel matches the reference backward', () => {
  forEachIsa(() => {
    for (const c of cases) {
      checkAgainstReference(
        (q: Tensor, k: Tensor, v: Tensor, ...rest: Tensor[]) => {
          const mask = c.mask ? rest[0] : undefined;
          const g = c.mask ? rest[1] : rest[0];
          for (const t of [q, k, v]) t.requiresGrad = true;
          backward(attend(c, 2 / Math.sqrt(c.D))(q, k, v, mask), g);
          return [q.grad!, k.grad!, v.grad!];
        },
        [...specs(c), { shape: [c.B, c.Hq, c.T, c.D] }],
        { atol: 2e-5, rtol: 1e-4 },
      );
    }
  });
});

test('attention: more threads than cores split the work without races', () => {
  // 7 threads: query blocks shrink to 8 rows, and several threads share each kv head
  const c: Case = { B: 1, Hq: 4, Hkv: 2, T: 70, S: 70, D: 24, causal: true, mask: [[0, 0, ...Array(68).fill(1)]] };
  withThreads(7, () =>
    checkAgainstReference(
      (q: Tensor, k: Tensor, v: Tensor, mask: Tensor, g: Tensor) => {
        for (const t of [q, k, v]) t.requiresGrad = true;
        const out = attend(c)(q, k, v, mask);
        backward(out, g);
        return [out, q.grad!, k.grad!, v.grad!];
      },
      [...specs(c), { shape: [c.B, c.Hq, c.T, c.D] }],
      { atol: 2e-5, rtol: 1e-4 },
    ),
  );
});

test('attention: gradients of q, k and v match finite differences', () => {
  const small: Case[] = [
    { B: 1, Hq: 2, Hkv: 1, T: 3, S: 5, D: 4, causal: true },
    { B: 2, Hq: 2, Hkv: 2, T: 4, S: 3, D: 3, causal: false, mask: [[1, 0, 1], [1, 1, 1]], strided: true },
    { B: 1, Hq: 4, Hkv: 2, T: 1, S: 6, D: 5, causal: true, mask: [[0, 1, 1, 1, 1, 1]] },
    { B: 1, Hq: 1, Hkv: 1, T: 4, S: 2, D: 3, causal: true },
  ];
  for (const c of small) gradcheck(attend(c), specs(c), { tol: { atol: 1e-6, rtol: 1e-5 } });
});

test('attention: fully masked rows give zeros, lse -inf, and no gradient', () => {
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const be = getBackend(device);
      const q = tensor(Array.from({ length: 3 * 2 }, (_, i) => i / 7), [1, 1, 3, 2], { device, requiresGrad: true });
      const k = tensor([1, 0, 0, 1], [1, 1, 2, 2], { device, requiresGrad: true });
      const v = tensor([1, 2, 3, 4], [1, 1, 2, 2], { device, requiresGrad: true });
      // T = 3 > S = 2 with causal: row 0 sees nothing, row 1 sees key 0, row 2 both
      const out = attention(q, k, v, { causal: true });
      const o = values(out);
      assert.deepEqual(Array.from(o.slice(0, 2)), [0, 0]);
      assertClose(o.slice(2, 4), [1, 2], { atol: 1e-6 });
      const lse = empty([1, 1, 3], 'f32', be);
      kernel(be, 'attention')(q, k, v, null, empty([1, 1, 3, 2], 'f32', be), lse, { scale: 1, causal: true });
      const l = values(lse);
      assert.equal(l[0], -Infinity);
      assertClose([l[1]], [2 / 7], { atol: 1e-6 }); // q1 . k0 with q1 = [2/7, 3/7], k0 = [1, 0]
      backward(out, tensor([5, 5, 1, 1, 1, 1], [1, 1, 3, 2], { device }));
      assert.deepEqual(Array.from(values(q.grad!).slice(0, 2)), [0, 0], device);
    });
  }
});

test('attention: a NaN score makes its whole row NaN (not skipped like a masked key), at every SIMD level', () => {
  const T = 5, D = 16;
  const q = randomData(2 * T * D, 11);
  q[2 * D + 3] = NaN; // one element of query row 2 of head 0
  forEachIsa(() => {
    checkAgainstReference((qq, kk, vv) => attention(qq, kk, vv, { causal: true }), [
      { shape: [1, 2, T, D], data: q },
      { shape: [1, 2, T, D] },
      { shape: [1, 2, T, D] },
    ]);
    scope(() => {
      const out = attention(tensor(q, [1, 2, T, D]), tensor(randomData(2 * T * D, 12), [1, 2, T, D]), tensor(randomData(2 * T * D, 13), [1, 2, T, D]), { causal: true });
      const o = values(out);
      for (let row = 0; row < 2 * T; row++) {
        const nan = o.slice(row * D, (row + 1) * D).every(Number.isNaN);
        assert.equal(nan, row === 2, `row ${row} is ${nan ? '' : 'not '}NaN`);
      }
    });
  });
});

test('attention: an int32 attention mask works like an f32 one', () => {
  scope(() => {
    const c: Case = { B: 1, Hq: 2, Hkv: 1, T: 3, S: 3, D: 4, causal: false };
    const q = tensor(Array.from({ length: 24 }, (_, i) => Math.sin(i)), [1, 2, 3, 4]);
    const k = tensor(Array.from({ length: 12 }, (_, i) => Math.cos(i)), [1, 1, 3, 4]);
    const a = values(attend(c)(q, k, k, tensor([1, 0, 1], [1, 3], { dtype: 'int32' })));
    const b = values(attend(c)(q, k, k, tensor([1, 0, 1], [1, 3])));
    assert.deepEqual(a, b);
  });
});

test('attention: bad shapes give clear errors', () => {
  scope(() => {
    const q = tensor(new Float32Array(3 * 4 * 2), [1, 3, 4, 2]);
    const k = tensor(new Float32Array(2 * 5 * 2), [1, 2, 5, 2]);
    assert.throws(() => attention(q, k, k, { causal: true }), /attention: query heads \(3\) must be a multiple of kv heads \(2\)/);
    const k1 = tensor(new Float32Array(5 * 2), [1, 1, 5, 2]);
    assert.throws(() => attention(q, k1, tensor(new Float32Array(5 * 3), [1, 1, 5, 3]), { causal: true }), /attention: q \[1, 3, 4, 2\], k \[1, 1, 5, 2\] and v \[1, 1, 5, 3\] do not agree/);
    assert.throws(() => attention(q, k1, k1, { causal: true, keyMask: tensor([1, 1, 1, 1], [1, 4]) }), /attention: keyMask must be \[1, 5\], got \[1, 4\]/);
    assert.throws(() => attention(tensor([1, 2], [1, 2]), k1, k1, { causal: false }), /attention: q must be \[batch, heads, seq, head_dim\], got \[1, 2\]/);
  });
});

test('attention: heads as transposed views of [B, T, H, D] and a KV-cache slice, read in place; out and gradients in their layout', () => {
  // D 64 and 128 take the 64-column register blocks, 80 adds a 16-column block, 24 and 17 the tails
  const shapes = [
    { B: 2, Hq: 4, Hkv: 2, T: 67, S: 67, D: 64, causal: true },
    { B: 1, Hq: 2, Hkv: 2, T: 130, S: 130, D: 128, causal: true },
    { B: 1, Hq: 3, Hkv: 1, T: 9, S: 21, D: 80, causal: true },
    { B: 2, Hq: 2, Hkv: 1, T: 6, S: 6, D: 24, causal: false },
    { B: 1, Hq: 2, Hkv: 2, T: 2, S: 5, D: 17, causal: true },
  ];
  forEachIsa(() => {
    for (const c of shapes) {
      const cap = c.S + 3;
      const qd = randomData(c.B * c.T * c.Hq * c.D, 1), kd = randomData(c.B * c.Hkv * cap * c.D, 2);
      const vd = randomData(c.B * c.S * c.Hkv * c.D, 3), gd = randomData(c.B * c.T * c.Hq * c.D, 4);
      const run = (device: string) =>
        scope(() => {
          // q and v as the model makes them: [B, T, H, D] projections, heads transposed out
          const q = transpose(tensor(qd, [c.B, c.T, c.Hq, c.D], { device }), 1, 2);
          const v = transpose(tensor(vd, [c.B, c.S, c.Hkv, c.D], { device }), 1, 2);
          // k as a KV cache holds it: the first S of cap positions
          const k = slice(tensor(kd, [c.B, c.Hkv, cap, c.D], { device }), 2, 0, c.S);
          for (const t of [q, k, v]) t.requiresGrad = true;
          const out = attention(q, k, v, { causal: c.causal, scale: 2 / Math.sqrt(c.D) });
          const g = transpose(tensor(gd, [c.B, c.T, c.Hq, c.D], { device }), 1, 2);
          if (device !== 'reference') {
            // the stride of an axis of size 1 does not matter
            const layout = (t: Tensor, strides: readonly number[]) => strides.map((st, i) => (t.shape[i] === 1 ? 0 : st));
            // A backend without stridedAttention would take and give contiguous heads.
            const strided = getBackend(device).stridedAttention === true;
            const like = (t: Tensor) => layout(t, strided ? t.strides : contiguousStrides(t.shape));
            assert.deepEqual(layout(out, out.strides), like(q), strided ? 'out is laid out like q' : 'out is contiguous');
            const [dq, dk, dv] = noGrad(() => out.gradFn!.backward(g));
            assert.deepEqual(layout(q, dq!.strides), like(q), strided ? 'dq is laid out like q' : 'dq is contiguous');
            assert.deepEqual(layout(k, dk!.strides), layout(k, contiguousStrides(k.shape)), 'dk of a sliced k is contiguous');
            assert.deepEqual(layout(v, dv!.strides), like(v), strided ? 'dv is laid out like v' : 'dv is contiguous');
          }
          backward(out, g);
          return [out, q.grad!, k.grad!, v.grad!].map(values);
        });
      const want = run('reference');
      for (const device of testBackends()) {
        run(device).forEach((got, i) => assertClose(got, want[i], { atol: 2e-5, rtol: 1e-4 }, `${device} ${['out', 'dq', 'dk', 'dv'][i]} D ${c.D}`));
      }
    }
  });
});

test('attention: bf16 heads as views of [B, T, H, D] projections and a KV cache, on every backend (cuda: the flash kernels through strides)', () => {
  // bf16 q, k, v take cuda's tensor-core kernels when D is a multiple of 8 up to 128 and
  // every row starts on 16 bytes: D 64 and 128 over several 64-row tiles (the last one
  // partial), D 24 and 96 padded to 32 and 96, GQA, key masks, causal and not, a decode
  // step over a cache slice. The last case's rows are 36 elements apart and start 4
  // elements into the buffer: no 16-byte row copies, the plain kernels through the same
  // strides. The reference computes in the device's dtypes (bf16 on cuda).
  interface BfCase extends Case {
    /** k and v: the first S of S + extra positions of a [B, Hkv, S + extra, D] cache (else transposed projections) */
    cacheExtra?: number;
    /** q: rows `pad` elements wider than Hq·D, starting `pad` elements into the buffer */
    pad?: number;
  }
  const bfCases: BfCase[] = [
    { B: 2, Hq: 4, Hkv: 2, T: 150, S: 150, D: 64, causal: true, mask: [Array(150).fill(1), [0, 0, 0, 0, 0, ...Array(145).fill(1)]] },
    { B: 1, Hq: 2, Hkv: 1, T: 70, S: 70, D: 128, causal: true },
    { B: 2, Hq: 2, Hkv: 2, T: 33, S: 33, D: 24, causal: false, mask: [[...Array(30).fill(1), 0, 1, 0], Array(33).fill(1)] },
    { B: 1, Hq: 3, Hkv: 1, T: 65, S: 65, D: 96, causal: true },
    { B: 2, Hq: 4, Hkv: 2, T: 5, S: 77, D: 64, causal: true, cacheExtra: 11 },
    { B: 2, Hq: 4, Hkv: 1, T: 1, S: 13, D: 64, causal: true, cacheExtra: 3, mask: [Array(13).fill(1), [0, 0, ...Array(11).fill(1)]] },
    { B: 2, Hq: 2, Hkv: 1, T: 19, S: 19, D: 16, causal: true, pad: 4 },
  ];
  const bf = (x: number) => roundTo('bf16', x);
  for (const [n, c] of bfCases.entries()) {
    const S0 = c.S + (c.cacheExtra ?? 0);
    const rowQ = c.Hq * c.D + (c.pad ?? 0);
    const qd = Float64Array.from(randomData((c.pad ?? 0) + c.B * c.T * rowQ, 20 + n), bf);
    const kd = Float64Array.from(randomData(c.B * S0 * c.Hkv * c.D, 30 + n), bf);
    const vd = Float64Array.from(randomData(c.B * S0 * c.Hkv * c.D, 40 + n), bf);
    const gd = Float64Array.from(randomData(c.B * c.T * c.Hq * c.D, 50 + n), bf);
    const run = (device: string) =>
      scope(() => {
        const opts = { device, dtype: 'bf16' } as const;
        const qBuf = tensor(qd, [qd.length], opts);
        const q = view(qBuf, [c.B, c.Hq, c.T, c.D], [c.T * rowQ, c.D, rowQ, 1], c.pad ?? 0);
        const kv = (d: Float64Array) =>
          c.cacheExtra === undefined
            ? transpose(tensor(d, [c.B, c.S, c.Hkv, c.D], opts), 1, 2)
            : slice(tensor(d, [c.B, c.Hkv, S0, c.D], opts), 2, 0, c.S);
        const k = kv(kd), v = kv(vd);
        const mask = c.mask ? tensor(c.mask.flat(), [c.B, c.S], { device }) : null;
        for (const t of [q, k, v]) t.requiresGrad = true;
        const out = attention(q, k, v, { causal: c.causal, keyMask: mask });
        backward(out, transpose(tensor(gd, [c.B, c.T, c.Hq, c.D], opts), 1, 2));
        return [out, q.grad!, k.grad!, v.grad!].map(values);
      });
    for (const device of testBackends()) {
      const want = withReferenceAs(device, () => run('reference'));
      const got = run(device);
      got.forEach((g, i) => {
        // bf16 rounding of P and dS before their products, and of every stored value:
        // errors near 1% of the largest entry, far below what a misplaced row gives.
        const top = want[i].reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        assertClose(g, want[i], { atol: 1e-2 * top, rtol: 2e-2 }, `${device} ${['out', 'dq', 'dk', 'dv'][i]} (case ${n}: D ${c.D}, T ${c.T}, S ${c.S})`);
      });
    }
  }
});
