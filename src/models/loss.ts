// The causal language-modelling loss as transformers computes it for *ForCausalLM
// models: logits at position t are scored against the token at t + 1 (the labels are
// shifted inside the loss, not by the caller), and the mean runs over the scored
// positions whose label is not ignoreIndex.
import { crossEntropy } from '../ops/crossentropy.js';
import { contiguous, reshape, slice } from '../ops/view.js';
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
  const x = reshape(contiguous(slice(logits, 1, 0, T - 1)), [B * (T - 1), V]);
  const y = reshape(contiguous(slice(labels, 1, 1, T)), [B * (T - 1)]);
  return crossEntropy(x, y, { ignoreIndex, reduction: 'mean' });
}
