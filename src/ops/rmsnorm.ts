// RMSNorm over the last axis, as Hugging Face's LlamaRMSNorm (Zhang & Sennrich 2019):
// y = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps), computed in f32 with the mean
// of squares accumulated in f64. Hugging Face rounds x * rstd back to the input dtype
// before multiplying by the weight; for f32 inputs that is the same, and here a bf16
// input is normalised without the intermediate rounding. The output (and dx) is in the
// input's compute dtype T (bf16 for bf16 x where the backend computes in bf16, else
// f32); dweight and rstd are always f32, and the weight is used in f32 (the kernels
// widen a bf16 weight as they read it; an f16 one is widened here).
// Backward is one fused kernel giving dx and dweight from the saved rstd; for a frozen
// weight, one giving dx alone (added into x's pending gradient when the tape offers it).
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape, sameShape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { assertDtype, computeDtype, sameBackend, withContiguousAs } from './util.js';

/** Hugging Face LlamaRMSNorm's default epsilon. */
export const RMS_NORM_EPS = 1e-6;

/** RMSNorm of x [..., D] with weight [D]; the output is [..., D] in x's compute dtype. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = RMS_NORM_EPS): Tensor {
  sameBackend('rmsNorm', x, weight);
  assertDtype('rmsNorm', x, ['f32', 'bf16', 'f16'], 'x');
  assertDtype('rmsNorm', weight, ['f32', 'bf16', 'f16'], 'weight');
  const D = x.shape[x.rank - 1];
  if (x.rank === 0 || weight.rank !== 1 || weight.shape[0] !== D) {
    throw new Error(`rmsNorm: weight ${formatShape(weight.shape)} does not match the last axis of x ${formatShape(x.shape)}`);
  }
  if (!(eps >= 0)) throw new Error(`rmsNorm: eps must be non-negative, got ${eps}`);
  const backend = x.backend;
  const N = x.size / Math.max(D, 1);
  const dtype = computeDtype(backend, x);
  const out = empty(x.shape, dtype, backend);
  const rstd = empty([N], 'f32', backend);
  // The weight as the kernels take it (f32 or bf16), for the forward kernel and (saved) for backward's.
  const wf = asKernelWeight(weight);
  if (x.size > 0) {
    // The kernels take contiguous rows of any rank (N is all but the last axis): no flat views.
    withContiguousAs(dtype, [x], (xc) => kernel(backend, 'rmsnorm')(xc, wf, out, rstd, eps));
  }
  const y = record(out, 'rmsNorm', [x, weight], (g, into) => {
    const dxOnly = backend.kernels.rmsnormBackwardDx;
    if (!weight.requiresGrad && dxOnly !== undefined) {
      // A frozen weight (every norm of an adapted model): dx alone, added into x's pending gradient when the tape offers it.
      const acc = into?.[0] ?? null;
      const target = acc !== null && acc.dtype === dtype && sameShape(acc.shape, x.shape) && acc.isContiguous() ? acc : null;
      const dx = target ?? empty(x.shape, dtype, backend);
      if (x.size > 0) withContiguousAs(dtype, [x, g], (xc, gc) => dxOnly(xc, wf, rstd, gc, dx, target !== null));
      return [dx, null];
    }
    const dx = empty(x.shape, dtype, backend);
    const dw = empty([D], 'f32', backend);
    // The kernel writes dweight (a sum over the rows); with no rows it is zero.
    if (x.size > 0) {
      withContiguousAs(dtype, [x, g], (xc, gc) => kernel(backend, 'rmsnormBackward')(xc, wf, rstd, gc, dx, dw));
    } else {
      kernel(backend, 'fill')(dw, 0);
    }
    return [dx, dw];
  }, [x, wf, rstd]);
  // rstd and the widened weight are only needed by backward
  if (y.gradFn === null) {
    rstd.dispose();
    if (wf !== weight) wf.dispose();
  }
  return y;
}

/** w itself when it is f32 or bf16 and contiguous, else an f32 contiguous copy (the caller's to dispose). */
function asKernelWeight(w: Tensor): Tensor {
  if ((w.dtype === 'f32' || w.dtype === 'bf16') && w.isContiguous()) return w;
  const c = empty(w.shape, 'f32', w.backend);
  kernel(w.backend, 'copy')(w, c);
  return c;
}
