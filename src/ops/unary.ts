// Elementwise maths: neg, exp, log, sqrt, rsqrt, silu, sigmoid, abs, square. Each runs
// the `unary` kernel on a contiguous copy of its input in the op's dtype T (bf16 for a
// bf16 input where the backend computes in bf16, else f32; when it is not one already)
// and records a backward built from ops; derivatives follow PyTorch, including abs'(0) = 0.
import { kernel } from '../backend/backend.js';
import type { UnaryOp } from '../backend/kernels.js';
import { record } from '../autograd/tape.js';
import { empty, scope, type Tensor } from '../tensor/tensor.js';
import { add, div, eq, maximum, mul, sub } from './binary.js';
import { computeDtype, withContiguousAs } from './util.js';

/** out = op(x) with no autograd record (the kernel call every unary op shares). */
function compute(op: UnaryOp, x: Tensor): Tensor {
  x.assertAlive(op);
  const dtype = computeDtype(x.backend, x);
  return withContiguousAs(dtype, [x], (xc) => {
    const out = empty(x.shape, dtype, x.backend);
    kernel(x.backend, 'unary')(op, xc, out);
    return out;
  });
}

/** Which of x and y = op(x) a derivative reads. */
type Reads = 'x' | 'y' | 'none';

/** Runs op and records `grad(g, x, y)`, whose temporaries are freed when it returns. */
function unary(op: UnaryOp, x: Tensor, reads: Reads, grad: (g: Tensor, x: Tensor, y: Tensor) => Tensor): Tensor {
  const y = compute(op, x);
  return record(y, op, [x], (g) => [scope(() => grad(g, x, y))], reads === 'x' ? [x] : reads === 'y' ? [y] : []);
}

export function neg(x: Tensor): Tensor {
  return unary('neg', x, 'none', (g) => compute('neg', g));
}

export function exp(x: Tensor): Tensor {
  return unary('exp', x, 'y', (g, _x, y) => mul(g, y));
}

/** Natural logarithm: NaN below 0, -inf at ±0. */
export function log(x: Tensor): Tensor {
  return unary('log', x, 'x', (g, x) => div(g, x));
}

export function sqrt(x: Tensor): Tensor {
  return unary('sqrt', x, 'y', (g, _x, y) => div(g, mul(y, 2)));
}

/** 1/sqrt(x). */
export function rsqrt(x: Tensor): Tensor {
  // d/dx x^(-1/2) = -x^(-3/2)/2 = -y³/2
  return unary('rsqrt', x, 'y', (g, _x, y) => mul(g, mul(mul(y, y), mul(y, -0.5))));
}

/** 1/(1 + e^(-x)). */
export function sigmoid(x: Tensor): Tensor {
  return unary('sigmoid', x, 'y', (g, _x, y) => mul(g, mul(y, sub(1, y))));
}

/** x·sigmoid(x) (SiLU, the activation in Llama's MLP). */
export function silu(x: Tensor): Tensor {
  // silu' = s + x·s·(1 - s) = s·(1 + x·(1 - s)), s = sigmoid(x)
  return unary('silu', x, 'x', (g, x) => {
    const s = compute('sigmoid', x);
    return mul(g, mul(s, add(1, mul(x, sub(1, s)))));
  });
}

/** |x|; the gradient at 0 is 0, as in PyTorch. */
export function abs(x: Tensor): Tensor {
  return unary('abs', x, 'x', (g, x) => {
    // sign(x) = [x >= 0] - [x <= 0], which is 0 at ±0
    const nonNeg = eq(maximum(x, 0), x);
    const negX = compute('neg', x);
    const nonPos = eq(maximum(negX, 0), negX);
    return mul(g, sub(nonNeg, nonPos));
  });
}

/** x². */
export function square(x: Tensor): Tensor {
  return unary('square', x, 'x', (g, x) => mul(g, mul(x, 2)));
}
