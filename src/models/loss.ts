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
import { concat } from '../ops/concat.js';
import { full } from '../ops/creation.js';
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
