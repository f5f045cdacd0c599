// Loading a model's Linear weights quantized (LlamaForCausalLM.fromPretrained's `quant`),
// as transformers' from_pretrained does with a BitsAndBytesConfig:
//
//   - a float checkpoint (F32/BF16/F16) is quantized as it is read: each projection is
//     read into one dense temporary in the load dtype, quantized, and the temporary
//     freed before the next, so loading never holds more than the quantized model plus
//     one layer's dense weight (and the checkpoint reader's staging chunk);
//   - a checkpoint saved quantized by bitsandbytes (src/quant/checkpoint.ts) is read
//     straight into QuantizedWeights, whether or not `quant` was asked: such a
//     checkpoint is a quantized model, as its config.json's quantization_config says.
//
// Every Linear but lm_head is quantized (transformers' get_keys_to_not_convert keeps the
// output head, and embeddings are not Linear layers). A module saved quantized in
// another format than the one asked for is an error, as is any inconsistency the
// bitsandbytes reader finds; both name the tensor and the file.
import type { Backend } from '../backend/backend.js';
import { type Checkpoint } from '../models/checkpoint.js';
import { empty, scope } from '../tensor/tensor.js';
import type { DType } from '../tensor/dtype.js';
import { checkpointSource, planQuantizedWeight, QuantizedCheckpointError, quantizedFormatOf, type QuantizedWeightPlan, type TensorSource } from './checkpoint.js';
import { type QuantFormat, type QuantizedWeight, quantizeWeight } from './weight.js';

/** The Linear modules transformers' bitsandbytes loading leaves in full precision. */
export function keptInFullPrecision(module: string): boolean {
  return module === 'lm_head' || module.endsWith('.lm_head');
}

/** Where a quantized module's weight comes from: bitsandbytes' tensors, or a float tensor quantized on read. */
type Source = { readonly kind: 'bnb'; readonly plan: QuantizedWeightPlan } | { readonly kind: 'float'; readonly tensor: string };

export class QuantizedLoading {
  private readonly src: TensorSource & { close(): void };
  private readonly sources = new Map<string, Source>();

  /** `quant`: the format to quantize float weights into; undefined reads only what is saved quantized. */
  constructor(private readonly ckpt: Checkpoint, readonly quant: QuantFormat | undefined) {
    this.src = checkpointSource(ckpt);
  }

  /** Whether the Linear `module` is held quantized: asked for (every Linear but lm_head), or saved quantized. */
  holdsQuantized(module: string): boolean {
    if (keptInFullPrecision(module)) return false;
    return this.quant !== undefined || quantizedFormatOf(this.src, module) !== null;
  }

  /**
   * Checks the weight of a quantized module against the [out, in] shape the config
   * gives it, and returns the checkpoint tensors it will be read from.
   */
  check(module: string, shape: readonly [number, number], backend: Backend): readonly string[] {
    const name = `${module}.weight`;
    const plan = this.named(module, () => planQuantizedWeight(this.src, module, { shape, device: backend }));
    if (plan !== null) {
      if (this.quant !== undefined && plan.format !== this.quant) {
        throw new QuantizedCheckpointError(name, `is saved by bitsandbytes as ${plan.format}, but ${this.quant} was asked for`, this.fileOf(name, module));
      }
      this.sources.set(module, { kind: 'bnb', plan });
      return plan.tensors;
    }
    // A float weight, quantized as it is read (holdsQuantized says quant was asked for).
    this.ckpt.check(name, shape);
    if (this.quant === undefined) throw new Error(`${module}: not saved quantized and no format to quantize it into`);
    this.sources.set(module, { kind: 'float', tensor: name });
    return [name];
  }

  /** Reads a checked module's weight: the bitsandbytes tensors, or the float tensor quantized in `dtype`. */
  read(module: string, shape: readonly [number, number], dtype: DType, backend: Backend): QuantizedWeight {
    const source = this.sources.get(module);
    if (source === undefined) throw new Error(`${module}: read before check`);
    if (source.kind === 'bnb') return this.named(module, () => source.plan.read());
    const dense = empty(shape, dtype, backend);
    try {
      this.ckpt.readInto(source.tensor, dense);
      return scope(() => quantizeWeight(dense, this.quant!));
    } finally {
      dense.dispose();
    }
  }

  close(): void {
    this.src.close();
  }

  /** The reader's errors, naming the file that holds (or should hold) the tensor. */
  private named<T>(module: string, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof QuantizedCheckpointError && e.file === '') throw e.inFile(this.fileOf(e.tensor, module));
      throw e;
    }
  }

  /** The file holding `tensor`; for a missing one, the file holding its module's weight (else the checkpoint's index). */
  private fileOf(tensor: string, module: string): string {
    for (const name of [tensor, `${module}.weight`]) if (this.ckpt.has(name)) return this.ckpt.fileOf(name);
    return this.ckpt.source;
  }
}
