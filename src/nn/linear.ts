// Linear layer with PyTorch's layout: y = x @ weightᵀ + bias, weight [out_features,
// in_features], bias [out_features] or none. The frozen base weight may be stored as
// f32 or bf16, or quantized in a bitsandbytes format (setQuantizedWeight, src/quant/);
// the output is in the activation dtype of x (bf16 for bf16 x and a bf16 or quantized
// weight on a backend that computes in bf16, else f32; src/ops/util.ts computeDtype).
//
// forward() is the layer's single entry point: every model calls a projection through
// it and nothing else, so an adapter (LoRA, DoRA) or a quantized layer can take a
// Linear's place by replacing that one method while keeping the parameter names
// (q_proj.weight) that checkpoints use.
import type { Backend, KernelName } from '../backend/backend.js';
import { full } from '../ops/creation.js';
import { linear } from '../ops/matmul.js';
import { quantizedLinear } from '../quant/ops.js';
import type { QuantizedWeight } from '../quant/weight.js';
import { formatShape } from '../tensor/shape.js';
import { type Tensor, view } from '../tensor/tensor.js';
import { Module } from './module.js';

/**
 * What a Linear holds as `weight` while its weight is quantized: one NaN broadcast to
 * the weight's shape by zero strides, so shape and device read from it and any use of
 * its values shows as NaN. Models built to be loaded quantized allocate this instead of
 * a dense weight.
 */
export function quantizedPlaceholder(shape: readonly number[], device: Backend): Tensor {
  const one = full([1], NaN, { device });
  const placeholder = view(one, shape, shape.map(() => 0), 0);
  one.dispose();
  return placeholder;
}

export class Linear extends Module {
  private dense: Tensor;
  private quant: QuantizedWeight | null = null;
  readonly bias: Tensor | null;

  constructor(weight: Tensor, bias: Tensor | null = null) {
    super();
    if (weight.rank !== 2) throw new Error(`Linear: weight must be [out_features, in_features], got ${formatShape(weight.shape)}`);
    if (bias !== null && (bias.rank !== 1 || bias.shape[0] !== weight.shape[0])) {
      throw new Error(`Linear: bias ${formatShape(bias.shape)} does not match weight ${formatShape(weight.shape)}`);
    }
    this.dense = this.registerParameter('weight', weight);
    this.bias = bias === null ? null : this.registerParameter('bias', bias);
  }

  /** The frozen weight [out, in]; a placeholder of NaN when it is held quantized (setQuantizedWeight). */
  get weight(): Tensor {
    return this.dense;
  }

  /** The weight in a bitsandbytes format (src/quant/) when the layer holds it quantized, else null. */
  get quantized(): QuantizedWeight | null {
    return this.quant;
  }

  get inFeatures(): number {
    return this.weight.shape[1];
  }

  get outFeatures(): number {
    return this.weight.shape[0];
  }

  /**
   * Hangs an adapter's sub-module under this layer (src/adapters/lora: lora_A, lora_B,
   * lora_magnitude_vector), so namedParameters() lists its parameters with PEFT's names
   * (q_proj.lora_A.weight); null takes it off again. The adapter replaces forward().
   */
  setAdapterModule(name: string, m: Module | null): void {
    if (m === null) this.unregisterModule(name);
    else this.registerModule(name, m);
  }

  /**
   * Whether the layer is the plain product with a frozen dense weight (and a frozen bias or
   * none): its own forward (no adapter took its place), nothing quantized, nothing that
   * trains. Its backward then needs only the weight.
   */
  isPlainFrozen(): boolean {
    return !Object.hasOwn(this, 'forward') && this.quant === null && !this.dense.requiresGrad && (this.bias === null || !this.bias.requiresGrad);
  }

  /** x [..., in_features] -> [..., out_features] in x's activation dtype. */
  forward(x: Tensor): Tensor {
    if (this.quant === null) return linear(x, this.dense, this.bias);
    return quantizedLinear(x, this.quant, this.bias);
  }

  protected override ownOps(): KernelName[] {
    // matmul forward and backward; the bias adds (binary) and its gradient sums (reduce).
    if (this.quant !== null) return this.bias === null ? ['quantizedMatmul', 'copy'] : ['quantizedMatmul', 'copy', 'reduce'];
    return this.bias === null ? ['matmul', 'copy'] : ['matmul', 'copy', 'binary', 'reduce'];
  }

  /**
   * Holds the frozen weight quantized from now on (int8 or NF4, src/quant/): forward()
   * decodes it on the fly, and the dense tensor is disposed. `weight` stays a parameter
   * of the same shape and device, one NaN broadcast by zero strides, so shapes and the
   * device still read from it while any use of its values shows as NaN; code that needs
   * W asks `quantized` (dequantize(), or the quantized kernels).
   */
  setQuantizedWeight(q: QuantizedWeight): void {
    if (q.rows !== this.outFeatures || q.cols !== this.inFeatures) {
      throw new Error(`Linear: quantized weight [${q.rows}, ${q.cols}] does not match weight ${formatShape(this.dense.shape)}`);
    }
    const device = this.dense.backend;
    if (q.backend !== device) throw new Error(`Linear: the quantized weight lives on ${q.backend.name}, the layer on ${device.name}`);
    const placeholder = quantizedPlaceholder(this.dense.shape, device);
    placeholder.name = this.dense.name;
    this.replaceParameter('weight', placeholder);
    this.dense = placeholder;
    if (this.quant !== null && this.quant !== q) this.quant.dispose();
    this.quant = q;
  }

  /**
   * Holds a dense weight again (src/quant's dequantizeModel: a merge into a quantized
   * base starts from the dequantized W); the quantized weight, if any, is freed. The
   * layer keeps `w`.
   */
  setDenseWeight(w: Tensor): void {
    if (w.rank !== 2 || w.shape[0] !== this.outFeatures || w.shape[1] !== this.inFeatures) {
      throw new Error(`Linear: weight ${formatShape(w.shape)} does not match ${formatShape(this.dense.shape)}`);
    }
    if (w.backend !== this.dense.backend) throw new Error(`Linear: the weight lives on ${w.backend.name}, the layer on ${this.dense.backend.name}`);
    w.name = this.dense.name;
    this.replaceParameter('weight', w);
    this.dense = w;
    this.quant?.dispose();
    this.quant = null;
  }

  override dispose(): void {
    super.dispose();
    this.quant?.dispose();
  }
}
