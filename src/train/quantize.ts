// A run's quant_bits applied to the base model, as FinLoRA's axolotl config asks
// transformers + bitsandbytes for it: load_in_8bit (int8 rows) or load_in_4bit (NF4,
// blocks of 64, double quantization; bnb_4bit_use_double_quant true). bitsandbytes
// replaces every Linear of the decoder layers and keeps lm_head in full precision
// (transformers' default llm_int8_skip_modules); so does this.
//
// The weights are quantized while the model loads (quantLoadOption, passed to
// LlamaForCausalLM.fromPretrained: src/quant/load.ts), so the dense base is never held;
// quantizeBase then checks and counts the quantized layers, and quantizes in place any
// that a caller loaded densely (each dense weight freed as it is replaced). A quantized
// Linear computes x·Wᵀ + b through src/quant's quantizedLinear (W decoded on the fly),
// and the adapters see it through its quantized FrozenWeight (products through the same
// kernel, the dequantized W for DoRA's norm).
import type { FrozenWeight } from '../adapters/lora/layer.js';
import { Linear } from '../nn/linear.js';
import type { Module } from '../nn/module.js';
import { quantizedFrozenWeight } from '../quant/model.js';
import { formatForBits, type QuantFormat, quantizeWeight } from '../quant/weight.js';
import { scope } from '../tensor/tensor.js';

export interface QuantizedBase {
  /** Linear layers quantized. */
  readonly count: number;
  /** The adapters' view of a quantized layer (undefined for layers left in float). */
  frozenWeight(name: string, target: Linear): FrozenWeight | undefined;
  /** The quantized weights belong to the model (model.dispose() frees them); kept for callers. */
  dispose(): void;
}

/** fromPretrained's option for a run's quant_bits: the format to quantize into while loading. */
export function quantLoadOption(bits: 4 | 8 | null): { quant?: QuantFormat } {
  return bits === null ? {} : { quant: formatForBits(bits) };
}

/** Quantizes the decoder layers' Linear weights of `model` (names model.layers.N.*) that are not quantized yet. */
export function quantizeBase(model: Module, bits: 4 | 8): QuantizedBase {
  const format = formatForBits(bits);
  let count = 0;
  for (const [name, m] of model.namedModules()) {
    if (!(m instanceof Linear) || !/^model\.layers\.\d+\./.test(name)) continue;
    if (m.quantized === null) m.setQuantizedWeight(scope(() => quantizeWeight(m.weight, format, { doubleQuant: true })));
    else if (m.quantized.format !== format) throw new Error(`${name}: the base holds it as ${m.quantized.format}, but quant_bits ${bits} asks for ${format}`);
    count++;
  }
  return {
    count,
    frozenWeight: (_name, target) => (target.quantized === null ? undefined : quantizedFrozenWeight(target.quantized)),
    dispose: () => {},
  };
}
