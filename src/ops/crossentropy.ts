// Softmax cross-entropy over the last axis with integer targets, as
// torch.nn.functional.cross_entropy: targets equal to ignoreIndex (default -100, the
// label Hugging Face puts on prompt and padding tokens) contribute nothing, and
// 'mean' divides by the number of targets that are not ignored.
//
// NOTE: when every target is ignored, PyTorch's 'mean' is 0/0 = NaN; here it is 0,
// with a zero gradient. A batch whose targets were all cut away (prompt longer than
// the sequence length) then costs nothing instead of turning the weights into NaN.
//
// Backends fuse the softmax: the forward saves one log-sum-exp per row, and the
// backward kernel writes dlogits directly, so no N x V temporary is made for contiguous
// logits in their compute dtype (f32, or bf16 on a backend that computes in bf16; other
// dtypes or layouts get one f32 copy). The loss, lse and the loss gradient are f32;
// dlogits has the logits' compute dtype.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape, numel } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { div, eq, maximum, sub } from './binary.js';
import { cast, reshape } from './view.js';
import { sum } from './reduce.js';
import { assertDtype, computeDtype, sameBackend, withContiguous, withContiguousAs, withF32Contiguous } from './util.js';
import { withShapes } from './nn_util.js';

export type CrossEntropyReduction = 'mean' | 'sum' | 'none';

export interface CrossEntropyOptions {
  /** Targets with this value are skipped (default -100). */
  ignoreIndex?: number;
  /** Default 'mean' (over non-ignored targets). 'none' gives one loss per target. */
  reduction?: CrossEntropyReduction;
}

/**
 * Cross-entropy of logits [..., V] (f32, bf16 or f16) against int32 targets [...];
 * a scalar for 'mean' and 'sum', targets-shaped f32 for 'none'.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const reduction = opts.reduction ?? 'mean';
  sameBackend('crossEntropy', logits, targets);
  assertDtype('crossEntropy', logits, ['f32', 'bf16', 'f16'], 'logits');
  assertDtype('crossEntropy', targets, ['int32'], 'targets');
  if (logits.rank === 0) throw new Error('crossEntropy: logits must have a class axis, got a scalar');
  const lead = logits.shape.slice(0, -1);
  if (targets.rank !== lead.length || targets.shape.some((d, i) => d !== lead[i])) {
    throw new Error(`crossEntropy: targets ${formatShape(targets.shape)} must match logits ${formatShape(logits.shape)} without its last axis`);
  }
  if (!Number.isInteger(ignoreIndex)) throw new Error(`crossEntropy: ignoreIndex must be an integer, got ${ignoreIndex}`);
  if (!['mean', 'sum', 'none'].includes(reduction)) throw new Error(`crossEntropy: unknown reduction '${reduction}'`);

  const perRow = rowLosses(logits, targets, ignoreIndex);
  if (reduction === 'none') return reshape(perRow, targets.shape);
  const total = sum(perRow);
  if (reduction === 'sum') return total;
  // the count of targets that are not ignored, at least 1, made on the device
  const ignored = sum(eq(cast(targets, 'f32'), ignoreIndex));
  const count = maximum(sub(numel(lead), ignored), 1);
  return div(total, count);
}

/** loss [N] per row of logits viewed as [N, V]; records the fused backward. */
function rowLosses(logits: Tensor, targets: Tensor, ignoreIndex: number): Tensor {
  const V = logits.shape[logits.rank - 1];
  const N = targets.size;
  const backend = logits.backend;
  const loss = empty([N], 'f32', backend);
  const lse = empty([N], 'f32', backend);
  const dtype = computeDtype(backend, logits);
  const call = <T>(fn: (lc: Tensor, tc: Tensor) => T): T =>
    withContiguousAs(dtype, [logits], (lc) =>
      withContiguous([[targets, null]], (tc) => withShapes([[lc, [N, V]], [tc, [N]]], (l2, t1) => fn(l2, t1))),
    );
  if (N > 0) {
    if (V === 0) throw new Error(`crossEntropy: logits ${formatShape(logits.shape)} have no classes`);
    try {
      call((l2, t1) => kernel(backend, 'crossEntropy')(l2, t1, loss, lse, ignoreIndex));
    } catch (e) {
      loss.dispose();
      lse.dispose();
      throw e;
    }
  }
  const out = record(loss, 'crossEntropy', [logits], (g) => {
    const dlogits = empty(logits.shape, dtype, backend);
    if (N > 0) {
      withF32Contiguous([g], (gc) =>
        withShapes([[dlogits, [N, V]]], (d2) => call((l2, t1) => kernel(backend, 'crossEntropyBackward')(l2, t1, lse, gc, d2, ignoreIndex))),
      );
    }
    return [dlogits];
  }, [logits, targets, lse]);
  // lse is only needed by backward
  if (out.gradFn === null) lse.dispose();
  return out;
}
