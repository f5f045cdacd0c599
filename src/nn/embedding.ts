// Embedding table module (PyTorch's nn.Embedding): weight [num_embeddings,
// embedding_dim], f32 or bf16 storage; lookups come out f32, or in the activation dtype asked for.
import type { KernelName } from '../backend/backend.js';
import { embedding } from '../ops/embedding.js';
import { formatShape } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ComputeDType } from '../ops/util.js';
import { Module } from './module.js';

export class Embedding extends Module {
  readonly weight: Tensor;

  constructor(weight: Tensor) {
    super();
    if (weight.rank !== 2) throw new Error(`Embedding: weight must be [num_embeddings, embedding_dim], got ${formatShape(weight.shape)}`);
    this.weight = this.registerParameter('weight', weight);
  }

  /** ids int32 [...] -> [..., embedding_dim] of `dtype` (default f32). */
  forward(ids: Tensor, dtype: ComputeDType = 'f32'): Tensor {
    return embedding(ids, this.weight, dtype);
  }

  protected override ownOps(): KernelName[] {
    return ['gather', 'scatterAdd', 'fill'];
  }
}
