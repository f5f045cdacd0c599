// A run's quant_bits applied to a loaded model, as FinLoRA's axolotl config asks
// transformers + bitsandbytes for it: load_in_8bit (int8 rows) or load_in_4bit (NF4,
// blocks of 64, double quantization; bnb_4bit_use_double_quant true). bitsandbytes
// replaces every Linear of the decoder layers and keeps lm_head in full precision
// (transformers' default llm_int8_skip_modules); so does this.
//
// Each quantized Linear computes x·Wᵀ + b through src/quant's quantizedLinear (W decoded
// on the fly), and the adapters see it through a FrozenWeight (products through the same
// kernel, the dequantized W for DoRA's norm). The float weights stay allocated beside
// the quantized ones until model loading can quantize without them: the numbers are
// those of the quantized base, the memory is not yet.
import type { FrozenWeight } from '../adapters/lora/layer.js';
import { Linear } from '../nn/linear.js';
import type { Module } from '../nn/module.js';
import { dequantize, quantizedLinear } from '../quant/ops.js';
import { formatForBits, type QuantizedWeight, quantizeWeight } from '../quant/weight.js';
import { scope, type Tensor } from '../tensor/tensor.js';

export interface QuantizedBase {
  /** Linear layers quantized. */
  readonly count: number;
  /** The adapters' view of a quantized layer (undefined for layers left in float). */
  frozenWeight(name: string, target: Linear): FrozenWeight | undefined;
  dispose(): void;
}

/** Quantizes the decoder layers' Linear weights of `model` (names model.layers.N.*). */
export function quantizeBase(model: Module, bits: 4 | 8): QuantizedBase {
  const format = formatForBits(bits);
  const layers = new Map<string, QuantizedWeight>();
  try {
    for (const [name, m] of model.namedModules()) {
      if (!(m instanceof Linear) || !/^model\.layers\.\d+\./.test(name)) continue;
      const qw = scope(() => quantizeWeight(m.weight, format, { doubleQuant: true }));
      layers.set(name, qw);
      const bias = m.bias;
      m.forward = (x: Tensor) => quantizedLinear(x, qw, bias);
    }
  } catch (e) {
    for (const w of layers.values()) w.dispose();
    throw e;
  }
  return {
    count: layers.size,
    frozenWeight: (name) => {
      const qw = layers.get(name);
      if (qw === undefined) return undefined;
      return {
        outFeatures: qw.rows,
        inFeatures: qw.cols,
        apply: (x) => quantizedLinear(x, qw, null),
        withDense: (fn) => scope(() => fn(dequantize(qw))),
      };
    },
    dispose: () => {
      for (const w of layers.values()) w.dispose();
    },
  };
}
