// Linear layer with PyTorch's layout: y = x @ weightᵀ + bias, weight [out_features,
// in_features], bias [out_features] or none. The frozen base weight may be stored as
// f32 or bf16; the output is f32.
//
// forward() is the layer's single entry point: every model calls a projection through
// it and nothing else, so an adapter (LoRA, DoRA) or a quantized layer can take a
// Linear's place by replacing that one method while keeping the parameter names
// (q_proj.weight) that checkpoints use.
import type { KernelName } from '../backend/backend.js';
import { linear } from '../ops/matmul.js';
import { formatShape } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from './module.js';

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(weight: Tensor, bias: Tensor | null = null) {
    super();
    if (weight.rank !== 2) throw new Error(`Linear: weight must be [out_features, in_features], got ${formatShape(weight.shape)}`);
    if (bias !== null && (bias.rank !== 1 || bias.shape[0] !== weight.shape[0])) {
      throw new Error(`Linear: bias ${formatShape(bias.shape)} does not match weight ${formatShape(weight.shape)}`);
    }
    this.weight = this.registerParameter('weight', weight);
    this.bias = bias === null ? null : this.registerParameter('bias', bias);
  }

  get inFeatures(): number {
    return this.weight.shape[1];
  }

  get outFeatures(): number {
    return this.weight.shape[0];
  }

  /** x [..., in_features] -> f32 [..., out_features]. */
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }

  protected override ownOps(): KernelName[] {
    // matmul forward and backward; the bias adds (binary) and its gradient sums (reduce).
    return this.bias === null ? ['matmul', 'copy'] : ['matmul', 'copy', 'binary', 'reduce'];
  }
}
