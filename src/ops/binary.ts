// Broadcasting elementwise arithmetic: add, sub, mul, div, maximum, and eq (no
// gradient). Operands may be numbers; compute is f32.
import { kernel } from '../backend/backend.js';
import type { BinaryOp } from '../backend/kernels.js';
import { record } from '../autograd/tape.js';
import { broadcastShapes } from '../tensor/shape.js';
import { empty, type Tensor, Tensor as TensorClass } from '../tensor/tensor.js';
import { scalar } from './creation.js';
import { cast, expand, sumTo } from './view.js';
import { sameBackend, type TensorLike } from './util.js';

function operands(op: string, a: TensorLike, b: TensorLike): [Tensor, Tensor] {
  if (!(a instanceof TensorClass) && !(b instanceof TensorClass)) throw new Error(`${op}: at least one operand must be a tensor`);
  const like = a instanceof TensorClass ? a : (b as Tensor);
  const x = a instanceof TensorClass ? a : scalar(a, { device: like.backend });
  const y = b instanceof TensorClass ? b : scalar(b, { device: like.backend });
  sameBackend(op, x, y);
  return [x, y];
}

/** out = a op b without recording (the kernel call every binary op shares). */
function compute(op: BinaryOp, x: Tensor, y: Tensor): Tensor {
  const shape = broadcastShapes(x.shape, y.shape, op);
  const xf = cast(x, 'f32');
  const yf = cast(y, 'f32');
  const xb = expand(xf, shape);
  const yb = expand(yf, shape);
  const out = empty(shape, 'f32', x.backend);
  kernel(x.backend, 'binary')(op, xb, yb, out);
  for (const t of [xb, yb]) t.dispose();
  if (xf !== x) xf.dispose();
  if (yf !== y) yf.dispose();
  return out;
}

function binary(op: BinaryOp, a: TensorLike, b: TensorLike, grads: (g: Tensor, x: Tensor, y: Tensor, out: Tensor) => [Tensor | null, Tensor | null]): Tensor {
  const [x, y] = operands(op, a, b);
  const out = compute(op, x, y);
  return record(out, op, [x, y], (g) => {
    const [gx, gy] = grads(g, x, y, out);
    return [gx && x.requiresGrad ? sumTo(gx, x.shape) : null, gy && y.requiresGrad ? sumTo(gy, y.shape) : null];
  });
}

export function add(a: TensorLike, b: TensorLike): Tensor {
  return binary('add', a, b, (g) => [g, g]);
}

export function sub(a: TensorLike, b: TensorLike): Tensor {
  return binary('sub', a, b, (g) => [g, compute('mul', g, scalar(-1, { device: g.backend }))]);
}

export function mul(a: TensorLike, b: TensorLike): Tensor {
  return binary('mul', a, b, (g, x, y) => [compute('mul', g, y), compute('mul', g, x)]);
}

export function div(a: TensorLike, b: TensorLike): Tensor {
  return binary('div', a, b, (g, x, y, out) => {
    const gx = compute('div', g, y);
    // d(x/y)/dy = -(x/y)/y
    const gy = compute('mul', compute('div', out, y), compute('mul', g, scalar(-1, { device: g.backend })));
    return [gx, gy];
  });
}

/** Elementwise maximum; on ties the gradient is split evenly, as in PyTorch. */
export function maximum(a: TensorLike, b: TensorLike): Tensor {
  return binary('maximum', a, b, (g, x, y, out) => {
    const mx = compute('eq', out, x);
    const my = compute('eq', out, y);
    const share = compute('add', mx, my);
    return [compute('mul', g, compute('div', mx, share)), compute('mul', g, compute('div', my, share))];
  });
}

/** 1 where a == b, else 0 (no gradient). */
export function eq(a: TensorLike, b: TensorLike): Tensor {
  const [x, y] = operands('eq', a, b);
  return compute('eq', x, y);
}
