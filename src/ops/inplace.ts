// In-place updates, for optimizers and caches: they write into an existing tensor's
// storage and are never recorded by autograd.
import { kernel } from '../backend/backend.js';
import { formatShape, sameShape } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';

/** dst[...] = src[...] (converted to dst's dtype); shapes must match, dst may be a view. */
export function assign(dst: Tensor, src: Tensor): void {
  dst.assertAlive('assign');
  src.assertAlive('assign');
  if (!sameShape(dst.shape, src.shape)) throw new Error(`assign: shape ${formatShape(src.shape)} does not match ${formatShape(dst.shape)}`);
  if (dst.backend !== src.backend) throw new Error(`assign: operands live on different devices (${dst.backend.name} and ${src.backend.name})`);
  kernel(dst.backend, 'copy')(src, dst);
}

/** Sets every element of a contiguous tensor to value. */
export function fill(dst: Tensor, value: number): void {
  dst.assertAlive('fill');
  if (!dst.isContiguous()) throw new Error('fill: tensor must be contiguous');
  kernel(dst.backend, 'fill')(dst, value);
}
