// The causal language-modelling loss as transformers computes it for *ForCausalLM
// models: logits at position t are scored against the token at t + 1 (the labels are
// shifted inside the loss, not by the caller), and the mean runs over the scored
// positions whose label is not ignoreIndex.
//
// The labels are shifted, not the logits: position t is scored against labels[t + 1]
// and the last position of each row against ignoreIndex, which the mean skips. The
// result is the same as slicing off the last position's logits, but the [B, T, V]
// logits are used in place (a contiguous view), so neither the forward copies them
// nor the backward pads their gradient back to [B, T, V] — at a 32k vocabulary those
// two passes cost about as much as the cross-entropy itself.
//
// causalLmLossAt goes further where few positions count (fine-tuning on the target
// tokens only): the model computes logits at the scored positions alone.
import { concat } from '../ops/concat.js';
import { full, tensor } from '../ops/creation.js';
import { crossEntropy } from '../ops/crossentropy.js';
import { reshape, slice } from '../ops/view.js';
import { formatShape } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';

/**
 * Mean next-token cross-entropy, shifted as transformers' causal-LM loss: logits[:, t]
 * predicts labels[:, t + 1]; labels equal to ignoreIndex (default -100) do not count.
 * logits f32 [B, T, V], labels int32 [B, T] -> a one-element tensor.
 */
export function causalLmLoss(logits: Tensor, labels: Tensor, ignoreIndex = -100): Tensor {
  if (logits.rank !== 3 || labels.rank !== 2 || labels.shape[0] !== logits.shape[0] || labels.shape[1] !== logits.shape[1]) {
    throw new Error(`causalLmLoss: logits [B, T, V] and labels [B, T] expected, got ${formatShape(logits.shape)} and ${formatShape(labels.shape)}`);
  }
  const [B, T, V] = logits.shape;
  if (T < 2) throw new Error(`causalLmLoss: need at least 2 positions to predict a next token, got ${T}`);
  const next = slice(labels, 1, 1, T);
  const end = full([B, 1], ignoreIndex, { dtype: 'int32', device: labels.backend });
  const targets = concat([next, end], 1);
  next.dispose();
  end.dispose();
  const x = reshape(logits, [B * T, V]);
  const y = reshape(targets, [B * T]);
  targets.dispose();
  return crossEntropy(x, y, { ignoreIndex, reduction: 'mean' });
}

/**
 * The positions a shifted causal-LM loss scores: position t of row b (flattened index
 * b·T + t) counts when labels[b, t + 1] is not ignoreIndex. Returns those indices in
 * order and their targets.
 */
export function scoredPositions(labels: ArrayLike<number>, B: number, T: number, ignoreIndex = -100): { rows: number[]; targets: Int32Array } {
  if (labels.length !== B * T) throw new Error(`scoredPositions: ${labels.length} labels for a [${B}, ${T}] batch`);
  const rows: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t + 1 < T; t++) if (labels[b * T + t + 1] !== ignoreIndex) rows.push(b * T + t);
  }
  return { rows, targets: Int32Array.from(rows, (r) => labels[r + 1]) };
}

/**
 * causalLmLoss computed where it counts: `logitsAt(rows)` gives the logits
 * [rows.length, V] of the flattened [B·T] positions `rows` (LlamaForCausalLM.forward's
 * `rows` option), called with the positions whose shifted label is not ignoreIndex.
 * Same mean and the same gradients as causalLmLoss on the full [B, T, V] logits, whose
 * other rows get no gradient there; with fine-tuning data that scores the target only,
 * most of the lm_head and cross-entropy work is skipped. labels: host int32 [B, T].
 */
export function causalLmLossAt(
  logitsAt: (rows: readonly number[]) => Tensor,
  labels: ArrayLike<number>,
  B: number,
  T: number,
  ignoreIndex = -100,
): Tensor {
  if (T < 2) throw new Error(`causalLmLossAt: need at least 2 positions to predict a next token, got ${T}`);
  const { rows, targets } = scoredPositions(labels, B, T, ignoreIndex);
  const logits = logitsAt(rows);
  if (logits.rank !== 2 || logits.shape[0] !== rows.length) {
    throw new Error(`causalLmLossAt: logits for ${rows.length} positions [${rows.length}, V] expected, got ${formatShape(logits.shape)}`);
  }
  const y = tensor(targets, [rows.length], { dtype: 'int32', device: logits.backend });
  return crossEntropy(logits, y, { ignoreIndex, reduction: 'mean' });
}
