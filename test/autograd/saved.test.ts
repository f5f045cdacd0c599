// What each op's record saves: a forward run inside a scope that returns only the
// loss frees every tensor no record saved, so a backward that reads anything else
// throws "was disposed". Each case's gradients must also be bit for bit those of the
// same forward run without the scope (nothing freed), on every backend under test and
// the reference (whose composed paths differ from the fused kernels').
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { attention } from '../../src/ops/attention.js';
import { add, div, maximum, mul, sub } from '../../src/ops/binary.js';
import { concat, indexSelect, stack } from '../../src/ops/concat.js';
import { tensor } from '../../src/ops/creation.js';
import { crossEntropy } from '../../src/ops/crossentropy.js';
import { doraScale } from '../../src/ops/dora.js';
import { dropout } from '../../src/ops/dropout.js';
import { embedding } from '../../src/ops/embedding.js';
import { linear, matmul } from '../../src/ops/matmul.js';
import { rowNorm } from '../../src/ops/norm.js';
import { max, mean, sum } from '../../src/ops/reduce.js';
import { rmsNorm } from '../../src/ops/rmsnorm.js';
import { rope, ropeInvFreq, rotaryTables } from '../../src/ops/rope.js';
import { logSoftmax, softmax } from '../../src/ops/softmax.js';
import { siluMul } from '../../src/ops/swiglu.js';
import { abs, exp, log, neg, rsqrt, sigmoid, silu, sqrt, square } from '../../src/ops/unary.js';
import { cast, contiguous, expand, permute, reshape, slice, transpose } from '../../src/ops/view.js';
import { numel, type Shape } from '../../src/tensor/shape.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { randomData, testBackends } from '../helpers.js';

interface Case {
  readonly name: string;
  /** Shapes of the trainable leaves. */
  readonly leaves: readonly Shape[];
  /** The op's output from the leaves; frozen operands are made inside. */
  readonly run: (p: readonly Tensor[], device: string) => Tensor;
}

let seed = 100;
/** A frozen tensor of fixed pseudo-random values. */
function frozen(shape: Shape, device: string, lo = -1, hi = 1): Tensor {
  return tensor(randomData(numel(shape), seed++, lo, hi), shape, { device });
}

const positive = (x: Tensor) => add(square(x), 0.5);

const CASES: Case[] = [
  { name: 'add (broadcast)', leaves: [[2, 3], [3]], run: ([a, b]) => add(a, b) },
  { name: 'sub (broadcast)', leaves: [[2, 3], [3]], run: ([a, b]) => sub(b, a) },
  { name: 'mul', leaves: [[2, 3], [2, 3]], run: ([a, b]) => mul(a, b) },
  { name: 'mul by a frozen operand', leaves: [[2, 3]], run: ([a], d) => mul(frozen([2, 3], d), a) },
  { name: 'mul, the frozen operand a leaf of one', leaves: [[2, 3]], run: ([a], d) => mul(a, frozen([3], d)) },
  { name: 'div', leaves: [[2, 3], [2, 3]], run: ([a, b]) => div(a, positive(b)) },
  { name: 'div, divisor only', leaves: [[3]], run: ([b], d) => div(frozen([2, 3], d), positive(b)) },
  { name: 'maximum', leaves: [[2, 3], [2, 3]], run: ([a, b]) => maximum(a, b) },
  { name: 'neg', leaves: [[5]], run: ([a]) => neg(a) },
  { name: 'exp', leaves: [[5]], run: ([a]) => exp(a) },
  { name: 'log', leaves: [[5]], run: ([a]) => log(positive(a)) },
  { name: 'sqrt', leaves: [[5]], run: ([a]) => sqrt(positive(a)) },
  { name: 'rsqrt', leaves: [[5]], run: ([a]) => rsqrt(positive(a)) },
  { name: 'sigmoid', leaves: [[5]], run: ([a]) => sigmoid(a) },
  { name: 'silu', leaves: [[5]], run: ([a]) => silu(a) },
  { name: 'abs', leaves: [[5]], run: ([a]) => abs(a) },
  { name: 'square', leaves: [[5]], run: ([a]) => square(a) },
  { name: 'matmul, both trainable', leaves: [[2, 3, 4], [4, 5]], run: ([a, b]) => matmul(a, b) },
  { name: 'matmul, a trainable (transB)', leaves: [[3, 4]], run: ([a], d) => matmul(a, frozen([5, 4], d), { transB: true }) },
  { name: 'matmul, b trainable (transA)', leaves: [[4, 5]], run: ([b], d) => matmul(frozen([2, 4, 3], d), b, { transA: true }) },
  { name: 'linear, weight and bias trainable', leaves: [[5, 4], [5]], run: ([w, b], d) => linear(frozen([2, 3, 4], d), w, b) },
  { name: 'linear, x trainable (frozen weight)', leaves: [[2, 3, 4]], run: ([x], d) => linear(square(x), frozen([5, 4], d), frozen([5], d)) },
  { name: 'linear, rank-1 x', leaves: [[4], [5, 4]], run: ([x, w]) => linear(exp(x), w) },
  { name: 'reshape, transpose, contiguous', leaves: [[2, 6]], run: ([a]) => contiguous(transpose(reshape(exp(a), [3, 4]))) },
  { name: 'permute', leaves: [[2, 3, 4]], run: ([a]) => permute(exp(a), [2, 0, 1]) },
  { name: 'slice with a step', leaves: [[7, 2]], run: ([a]) => slice(exp(a), 0, 1, 7, 2) },
  { name: 'expand', leaves: [[1, 3]], run: ([a]) => expand(exp(a), [4, 3]) },
  { name: 'cast to bf16 and back', leaves: [[6]], run: ([a]) => cast(cast(exp(a), 'bf16'), 'f32') },
  { name: 'concat and stack', leaves: [[2, 3], [1, 3]], run: ([a, b]) => stack([concat([exp(a), b]), concat([b, a])]) },
  { name: 'indexSelect with repeats', leaves: [[4, 3]], run: ([a]) => indexSelect(exp(a), 0, [3, 1, 1, 0]) },
  { name: 'sum, mean, max', leaves: [[3, 4]], run: ([a]) => concat([sum(exp(a), 1), mean(exp(a), 1), max(a, 1)]) },
  { name: 'softmax', leaves: [[3, 5]], run: ([a]) => softmax(mul(a, 3)) },
  { name: 'logSoftmax', leaves: [[3, 5]], run: ([a]) => logSoftmax(mul(a, 3)) },
  { name: 'rowNorm', leaves: [[3, 4]], run: ([a]) => rowNorm(exp(a)) },
  { name: 'rmsNorm', leaves: [[2, 3, 8], [8]], run: ([x, w]) => rmsNorm(exp(x), w) },
  {
    name: 'rope',
    leaves: [[1, 3, 2, 4]],
    run: ([x], d) => {
      const { cos, sin } = rotaryTables(ropeInvFreq({ rope_theta: 10000, head_dim: 4 }), Int32Array.from([0, 1, 2]), { device: d });
      return rope(exp(x), cos, sin);
    },
  },
  {
    name: 'attention (causal, key mask)',
    leaves: [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]],
    run: ([q, k, v], d) => attention(exp(q), mul(k, 2), square(v), { causal: true, keyMask: tensor([0, 1, 1], [1, 3], { device: d }) }),
  },
  {
    name: 'crossEntropy',
    leaves: [[2, 3, 5]],
    run: ([l], d) => crossEntropy(mul(l, 2), tensor([1, 4, -100, 0, 2, 2], [2, 3], { dtype: 'int32', device: d }), { reduction: 'none' }),
  },
  { name: 'embedding', leaves: [[6, 4]], run: ([w], d) => embedding(tensor([5, 0, 5, 2], [2, 2], { dtype: 'int32', device: d }), w) },
  { name: 'siluMul', leaves: [[3, 4], [3, 4]], run: ([g, u]) => siluMul(mul(g, 2), exp(u)) },
  { name: 'doraScale, all trainable', leaves: [[3, 4], [3, 4], [4]], run: ([b, l, g]) => doraScale(exp(b), square(l), g, 0.5) },
  { name: 'doraScale, magnitude only', leaves: [[4]], run: ([g], d) => doraScale(frozen([3, 4], d), frozen([3, 4], d), exp(g), 2) },
  { name: 'dropout', leaves: [[64]], run: ([a]) => dropout(exp(a), 0.25, { seed: 7, offset: 3 }) },
];

/** Every leaf's gradient of sum(out ⊙ w) for a fixed random w, the forward in a scope or not. */
function gradients(c: Case, device: string, scoped: boolean): number[][] {
  return scope(() => {
    const leaves = c.leaves.map((shape, i) => tensor(randomData(numel(shape), 10 + i), shape, { device, requiresGrad: true }));
    seed = 100;
    const forward = () => {
      const out = c.run(leaves, device);
      return sum(mul(cast(out, 'f32'), frozen(out.shape, device)));
    };
    backward(scoped ? scope(forward) : forward());
    return leaves.map((l) => [...l.grad!.toArray()]);
  });
}

for (const device of ['reference', ...testBackends()]) {
  test(`each op saves what its backward reads: a scoped forward gives the same gradients bit for bit (${device})`, () => {
    for (const c of CASES) {
      const plain = gradients(c, device, false);
      const scoped = gradients(c, device, true);
      assert.deepEqual(scoped, plain, `${c.name} on ${device}`);
      assert.ok(plain.some((g) => g.some((v) => v !== 0)), `${c.name}: some gradient is non-zero`);
    }
  });
}
