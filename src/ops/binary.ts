// Broadcasting elementwise arithmetic: add, sub, mul, div, maximum, and eq (no
// gradient). Operands may be numbers, which take the dtype of the tensor operand's
// computation; compute is in T (computeDtype: bf16 when both tensors are bf16 on a
// backend that computes in bf16, else f32). Backward computes only the
// gradients of operands that need one (a frozen weight or a constant costs no pass
// over the output) and frees its temporaries as soon as they are summed.
import { kernel } from '../backend/backend.js';
import type { BinaryOp } from '../backend/kernels.js';
import { record } from '../autograd/tape.js';
import { broadcastShapes, sameShape } from '../tensor/shape.js';
import { empty, type Tensor, Tensor as TensorClass } from '../tensor/tensor.js';
import { scalar } from './creation.js';
import { cast, expand, sumTo } from './view.js';
import { computeDtype, sameBackend, type TensorLike, withContiguousAs } from './util.js';

function operands(op: string, a: TensorLike, b: TensorLike): [Tensor, Tensor] {
  if (!(a instanceof TensorClass) && !(b instanceof TensorClass)) throw new Error(`${op}: at least one operand must be a tensor`);
  const like = a instanceof TensorClass ? a : (b as Tensor);
  // A number joins the tensor's computation: in bf16 when that is bf16 (PyTorch keeps a
  // Python scalar wider; rounding it costs at most one bf16 ulp of relative error).
  const dtype = computeDtype(like.backend, like);
  const x = a instanceof TensorClass ? a : scalar(a, { device: like.backend, dtype });
  const y = b instanceof TensorClass ? b : scalar(b, { device: like.backend, dtype });
  sameBackend(op, x, y);
  return [x, y];
}

/** out = a op b without recording (the kernel call every binary op shares). */
function compute(op: BinaryOp, x: Tensor, y: Tensor): Tensor {
  const shape = broadcastShapes(x.shape, y.shape, op);
  const dtype = computeDtype(x.backend, x, y);
  const xf = cast(x, dtype);
  const yf = cast(y, dtype);
  // An operand that already has the output's shape needs no broadcast view.
  const xb = sameShape(xf.shape, shape) ? xf : expand(xf, shape);
  const yb = sameShape(yf.shape, shape) ? yf : expand(yf, shape);
  const out = empty(shape, dtype, x.backend);
  kernel(x.backend, 'binary')(op, xb, yb, out);
  if (xb !== xf) xb.dispose();
  if (yb !== yf) yb.dispose();
  if (xf !== x) xf.dispose();
  if (yf !== y) yf.dispose();
  return out;
}

/** Which operands need a gradient: backward closures compute only those. */
type Wanted = readonly [boolean, boolean];

/** What a backward reads, given the operands and which of them need a gradient. */
type Reads = (x: Tensor, y: Tensor, out: Tensor, want: Wanted) => Tensor[];

function binary(
  op: BinaryOp,
  a: TensorLike,
  b: TensorLike,
  grads: (g: Tensor, x: Tensor, y: Tensor, out: Tensor, want: Wanted) => [Tensor | null, Tensor | null],
  reads: Reads = (x, y, out) => [x, y, out],
): Tensor {
  const [x, y] = operands(op, a, b);
  const out = compute(op, x, y);
  return record(
    out,
    op,
    [x, y],
    (g) => {
      const [gx, gy] = grads(g, x, y, out, [x.requiresGrad, y.requiresGrad]);
      return [reduced(gx, x, g), reduced(gy, y, g)];
    },
    reads(x, y, out, [x.requiresGrad, y.requiresGrad]),
  );
}

/** d summed back to x's shape; temporaries made for it (not g itself) are freed. */
function reduced(d: Tensor | null, x: Tensor, g: Tensor): Tensor | null {
  if (d === null) return null;
  const r = sumTo(d, x.shape);
  if (r !== d && d !== g) d.dispose();
  return r;
}

/** -t in place, for a fresh contiguous temporary the caller owns. */
function negateInPlace(t: Tensor): Tensor {
  kernel(t.backend, 'unary')('neg', t, t);
  return t;
}

/** -g into a new tensor. */
function negated(g: Tensor): Tensor {
  const dtype = computeDtype(g.backend, g);
  return withContiguousAs(dtype, [g], (gc) => {
    const out = empty(g.shape, dtype, g.backend);
    kernel(g.backend, 'unary')('neg', gc, out);
    return out;
  });
}

export function add(a: TensorLike, b: TensorLike): Tensor {
  return binary('add', a, b, (g, _x, _y, _out, [wx, wy]) => [wx ? g : null, wy ? g : null], () => []);
}

export function sub(a: TensorLike, b: TensorLike): Tensor {
  return binary('sub', a, b, (g, _x, _y, _out, [wx, wy]) => [wx ? g : null, wy ? negated(g) : null], () => []);
}

export function mul(a: TensorLike, b: TensorLike): Tensor {
  return binary(
    'mul',
    a,
    b,
    (g, x, y, _out, [wx, wy]) => [wx ? compute('mul', g, y) : null, wy ? compute('mul', g, x) : null],
    // Each gradient reads the other operand only.
    (x, y, _out, [wx, wy]) => [...(wx ? [y] : []), ...(wy ? [x] : [])],
  );
}

export function div(a: TensorLike, b: TensorLike): Tensor {
  return binary('div', a, b, (g, x, y, out, [wx, wy]) => {
    const gx = wx ? compute('div', g, y) : null;
    if (!wy) return [gx, null];
    // d(x/y)/dy = -(x/y)/y
    const q = compute('div', out, y);
    const gy = negateInPlace(compute('mul', q, g));
    q.dispose();
    return [gx, gy];
  }, (_x, y, out, [, wy]) => (wy ? [y, out] : [y]));
}

/** Elementwise maximum; on ties the gradient is split evenly, as in PyTorch. */
export function maximum(a: TensorLike, b: TensorLike): Tensor {
  return binary('maximum', a, b, (g, x, y, out, [wx, wy]) => {
    if (!wx && !wy) return [null, null];
    const mx = compute('eq', out, x);
    const my = compute('eq', out, y);
    const share = compute('add', mx, my);
    const part = (m: Tensor): Tensor => {
      const f = compute('div', m, share);
      const r = compute('mul', g, f);
      f.dispose();
      return r;
    };
    const grads: [Tensor | null, Tensor | null] = [wx ? part(mx) : null, wy ? part(my) : null];
    for (const t of [mx, my, share]) t.dispose();
    return grads;
  });
}

/** 1 where a == b, else 0 (no gradient). */
export function eq(a: TensorLike, b: TensorLike): Tensor {
  const [x, y] = operands('eq', a, b);
  return compute('eq', x, y);
}
