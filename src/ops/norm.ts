// L2 norms along axes: l2Norm, and the two shapes DoRA's weight decomposition needs
// (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", 2024): rowNorm for a
// Hugging Face Linear weight [out, in] (one norm per output row, PEFT's
// lora_magnitude_vector layout) and colNorm, the column-wise norm of a d×k matrix as
// the paper writes it. Sums of squares accumulate in f64 in the reduce kernel.
//
// NOTE: d‖x‖/dx = x/‖x‖ is undefined at x = 0; the gradient there is 0 (the
// minimum-norm subgradient, which is what PyTorch's norm backward returns).
import { noGrad, record } from '../autograd/tape.js';
import { normAxis } from '../tensor/shape.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import { add, div, eq, mul } from './binary.js';
import { type ReduceOptions, sum } from './reduce.js';
import { sqrt, square } from './unary.js';
import { reshape } from './view.js';

/** sqrt(sum(x², axes)): the Euclidean norm along one axis or several. */
export function l2Norm(x: Tensor, axis: number | readonly number[], opts: ReduceOptions = {}): Tensor {
  x.assertAlive('l2Norm');
  const axes = (typeof axis === 'number' ? [axis] : [...axis]).map((a) => normAxis(a, x.rank, 'l2Norm'));
  const n = noGrad(() => scope(() => sqrt(sum(square(x), axes, opts))));
  return record(n, 'l2Norm', [x], (g) =>
    [
      scope(() => {
        const kept = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
        const nk = reshape(n, kept);
        // Where the norm is 0, x is 0 along the axis too: dividing by 1 there gives 0.
        const denom = add(nk, eq(nk, 0));
        return div(mul(reshape(g, kept), x), denom);
      }),
    ]);
}

/** One norm per row of the last axis: [..., n] -> [...]; for a Linear weight [out, in], one per output. */
export function rowNorm(x: Tensor, opts: ReduceOptions = {}): Tensor {
  return l2Norm(x, -1, opts);
}

/** One norm per column: [d, k] -> [k] (the DoRA paper's ‖W‖_c for W ∈ R^{d×k}). */
export function colNorm(x: Tensor, opts: ReduceOptions = {}): Tensor {
  return l2Norm(x, 0, opts);
}
