// DoRA's output scaling (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank
// Adaptation"): y = (base + s·lora) ⊙ g, with base = W·x, lora = B·A·x̃ and
// g = m / ‖W + s·B·A‖ one factor per output feature (src/adapters/lora/dora.ts makes
// g and says why the norm carries no gradient).
//
// A backend with the fused kernels (doraScale, doraScaleBackward) does the forward in
// one pass and the backward, including g's gradient, in another; elsewhere the op is
// composed from mul and add, the same function with the same gradient.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape, sameShape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { add, mul } from './binary.js';
import { sameBackend, withF32Contiguous } from './util.js';

/** (base + s·lora) ⊙ g for base, lora [..., out] and g [out]; f32 out. */
export function doraScale(base: Tensor, lora: Tensor, g: Tensor, s: number): Tensor {
  sameBackend('doraScale', base, lora, g);
  const cols = base.shape[base.rank - 1];
  if (base.rank < 1 || !sameShape(base.shape, lora.shape) || g.rank !== 1 || g.shape[0] !== cols) {
    throw new Error(`doraScale: base and lora [..., out] and g [out] expected, got ${formatShape(base.shape)}, ${formatShape(lora.shape)} and ${formatShape(g.shape)}`);
  }
  const backend = base.backend;
  const { doraScale: forward, doraScaleBackward: back } = backend.kernels;
  if (forward === undefined || back === undefined) return mul(add(base, mul(lora, s)), g);
  const out = empty(base.shape, 'f32', backend);
  if (out.size > 0) withF32Contiguous([base, lora, g], (b, l, gc) => forward(b, l, gc, out, s));
  return record(out, 'doraScale', [base, lora, g], (dout) => {
    const dbase = empty(base.shape, 'f32', backend);
    const dlora = empty(lora.shape, 'f32', backend);
    const dg = empty(g.shape, 'f32', backend);
    if (out.size > 0) withF32Contiguous([base, lora, g, dout], (b, l, gc, d) => back(b, l, gc, d, dbase, dlora, dg, s));
    else if (dg.size > 0) kernel(backend, 'fill')(dg, 0);
    const grads: (Tensor | null)[] = [dbase, dlora, dg];
    // All three come out of one pass; drop those nobody needs.
    [base, lora, g].forEach((t, i) => {
      if (!t.requiresGrad) {
        grads[i]!.dispose();
        grads[i] = null;
      }
    });
    return grads;
  });
}
