// RMSNorm module with Hugging Face's LlamaRMSNorm parameter (weight [hidden]); the
// maths lives in ops/rmsnorm.ts.
import type { KernelName } from '../backend/backend.js';
import { rmsNorm } from '../ops/rmsnorm.js';
import { formatShape } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from './module.js';

export class RMSNorm extends Module {
  readonly weight: Tensor;

  constructor(weight: Tensor, readonly eps: number) {
    super();
    if (weight.rank !== 1) throw new Error(`RMSNorm: weight must be [hidden], got ${formatShape(weight.shape)}`);
    this.weight = this.registerParameter('weight', weight);
  }

  /** x [..., hidden] -> [..., hidden] in x's activation dtype (the weight is used in f32). */
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }

  protected override ownOps(): KernelName[] {
    return ['rmsnorm', 'rmsnormBackward', 'fill'];
  }
}
