// DoRA's two kernels-level pieces (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank
// Adaptation"; src/adapters/lora/dora.ts makes g and says why the norm carries no
// gradient):
//
//   doraScale  y = (base + s·lora) ⊙ g, with base = W·x, lora = B·A·x̃ and
//              g = m / ‖W + s·B·A‖ one factor per output feature;
//   doraNorm   n = ‖W + s·B·A‖ per output row, computed directly in one kernel.
//
// A backend with the fused kernels (doraScale, doraScaleBackward) does doraScale's
// forward in one pass and the backward, including g's gradient, in another; elsewhere
// the op is composed from mul and add, the same function with the same gradient.
//
// Compute dtype (the bf16 contract): doraScale computes in T = bf16 when base is bf16
// and the backend computes in bf16 (Backend.computeDtypes), else in f32. lora is cast
// to T (its gradient flows back through the cast), g is always f32; out, dbase and dlora
// are T and dg is f32.
import { type Backend, kernel } from '../backend/backend.js';
import { noGrad, record } from '../autograd/tape.js';
import type { DType } from '../tensor/dtype.js';
import { formatShape, sameShape } from '../tensor/shape.js';
import { empty, scope, type Tensor } from '../tensor/tensor.js';
import { add, mul } from './binary.js';
import { matmul } from './matmul.js';
import { rowNorm } from './norm.js';
import { computesBf16, sameBackend, withContiguous } from './util.js';
import { cast } from './view.js';

/** The activation dtype T doraScale computes in for this base (see the header). */
export function doraScaleDtype(base: Tensor): 'f32' | 'bf16' {
  return base.dtype === 'bf16' && computesBf16(base.backend) ? 'bf16' : 'f32';
}

/** (base + s·lora) ⊙ g for base, lora [..., out] and g [out]; out in base's compute dtype. */
export function doraScale(base: Tensor, lora: Tensor, g: Tensor, s: number): Tensor {
  sameBackend('doraScale', base, lora, g);
  const cols = base.shape[base.rank - 1];
  if (base.rank < 1 || !sameShape(base.shape, lora.shape) || g.rank !== 1 || g.shape[0] !== cols) {
    throw new Error(`doraScale: base and lora [..., out] and g [out] expected, got ${formatShape(base.shape)}, ${formatShape(lora.shape)} and ${formatShape(g.shape)}`);
  }
  const T = doraScaleDtype(base);
  const backend = base.backend;
  const { doraScale: forward, doraScaleBackward: back } = backend.kernels;
  if (forward === undefined || back === undefined) {
    // Composed ops promote a mixed bf16/f32 product to f32; the result is rounded to T once.
    return cast(mul(add(cast(base, T), mul(cast(lora, T), s)), cast(g, 'f32')), T);
  }
  // The cast is recorded, so lora's gradient comes back in lora's own dtype.
  const loraT = cast(lora, T);
  const out = empty(base.shape, T, backend);
  if (out.size > 0) withContiguous([[base, T], [loraT, T], [g, 'f32']], (b, l, gc) => forward(b, l, gc, out, s));
  return record(out, 'doraScale', [base, loraT, g], (dout) => {
    const dbase = empty(base.shape, T, backend);
    const dlora = empty(lora.shape, T, backend);
    const dg = empty(g.shape, 'f32', backend);
    if (out.size > 0) {
      withContiguous([[base, T], [loraT, T], [g, 'f32'], [dout, T]], (b, l, gc, d) => back(b, l, gc, d, dbase, dlora, dg, s));
    } else if (dg.size > 0) kernel(backend, 'fill')(dg, 0);
    const grads: (Tensor | null)[] = [dbase, dlora, dg];
    // All three come out of one pass; drop those nobody needs.
    [base, loraT, g].forEach((t, i) => {
      if (!t.requiresGrad) {
        grads[i]!.dispose();
        grads[i] = null;
      }
    });
    return grads;
  }, [base, loraT, g]);
}

/** Whether the backend computes doraNorm in one kernel (otherwise the op is composed, materialising W + s·B·A). */
export function hasDoraNormKernel(backend: Backend): boolean {
  return backend.kernels.doraNorm !== undefined;
}

/**
 * n = ‖W_i + s·(B·A)_i‖₂ per row, f32 [rows], with no gradient (DoRA §4.3: the norm is a
 * constant in backward). w [rows, cols] f32 or bf16 (other float dtypes are read as
 * f32), a [r, cols], b [rows, r]. The direct form: no low-rank identity, so an update
 * that cancels a row (s·B_i·A ≈ −W_i) gets its small norm accurately, and nothing is
 * read back to the host.
 */
export function doraNorm(w: Tensor, a: Tensor, b: Tensor, s: number): Tensor {
  sameBackend('doraNorm', w, a, b);
  if (w.rank !== 2 || a.rank !== 2 || b.rank !== 2 || a.shape[1] !== w.shape[1] || b.shape[0] !== w.shape[0] || b.shape[1] !== a.shape[0]) {
    throw new Error(`doraNorm: w [rows, cols], a [r, cols] and b [rows, r] expected, got ${formatShape(w.shape)}, ${formatShape(a.shape)} and ${formatShape(b.shape)}`);
  }
  const backend = w.backend;
  const k = backend.kernels.doraNorm;
  if (k === undefined) return noGrad(() => scope(() => rowNorm(add(cast(w, 'f32'), mul(matmul(cast(b, 'f32'), cast(a, 'f32')), s)))));
  const out = empty([w.shape[0]], 'f32', backend);
  if (out.size === 0) return out;
  const wDtype: DType = w.dtype === 'bf16' ? 'bf16' : 'f32';
  withContiguous([[w, wDtype], [a, 'f32'], [b, 'f32']], (wc, ac, bc) => k(wc, ac, bc, out, s));
  return out;
}
