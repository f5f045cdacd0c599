// Putting a model's frozen Linear weights into a bitsandbytes format, as transformers
// does for load_in_8bit / load_in_4bit (BitsAndBytesConfig): every Linear except the
// output head (transformers keeps lm_head, and a head tied to the embeddings, in full
// precision: get_keys_to_not_convert), and the matching FrozenWeight an adapter uses for
// a quantized base (src/adapters/lora/layer.ts: products through the dequantizing
// kernels, a dequantized copy only where W itself is needed).
import { Linear } from '../nn/linear.js';
import type { Module } from '../nn/module.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import { keptInFullPrecision } from './load.js';
import type { Nf4Options } from './nf4.js';
import { dequantize, quantizedDoraNorm, quantizedLinear } from './ops.js';
import { type QuantFormat, type QuantizedWeight, quantizeWeight } from './weight.js';

export interface QuantizeModelOptions extends Nf4Options {
  /** Modules to leave in full precision, by name; default: lm_head. */
  readonly skip?: (name: string) => boolean;
}

export interface QuantizeModelReport {
  /** Names of the quantized Linear modules, in module order. */
  readonly quantized: string[];
  /** Values and bytes of the quantized weights. */
  readonly parameters: number;
  readonly bytes: number;
}

/**
 * Quantizes every Linear of `model` (but the skipped ones) in place: each dense weight
 * is quantized and then freed before the next, so the extra memory is one layer's.
 */
export function quantizeModel(model: Module, format: QuantFormat, opts: QuantizeModelOptions = {}): QuantizeModelReport {
  const skip = opts.skip ?? keptInFullPrecision;
  const quantized: string[] = [];
  let parameters = 0, bytes = 0;
  for (const [name, m] of model.namedModules()) {
    if (!(m instanceof Linear) || skip(name) || m.quantized !== null) continue;
    const q = quantizeWeight(m.weight, format, opts);
    m.setQuantizedWeight(q);
    quantized.push(name);
    parameters += q.parameters;
    bytes += q.bytes;
  }
  return { quantized, parameters, bytes };
}

/**
 * Holds every quantized Linear of `model` dense again, in f32: the dequantized values the
 * quantized kernels compute with, so the model computes what it did, up to f32 summation
 * order. A merge into a quantized base starts here (a quantized weight cannot be written).
 * Returns the names and formats of the layers dequantized.
 */
export function dequantizeModel(model: Module): [string, QuantFormat][] {
  const done: [string, QuantFormat][] = [];
  for (const [name, m] of model.namedModules()) {
    if (!(m instanceof Linear) || m.quantized === null) continue;
    const format = m.quantized.format;
    m.setDenseWeight(scope(() => dequantize(m.quantized!)));
    done.push([name, format]);
  }
  return done;
}

/**
 * The frozen weight of a quantized base as an adapter sees it (the shape of
 * src/adapters/lora/layer.ts's FrozenWeight): x·Wᵀ through the quantized kernel, DoRA's
 * norm from the quantized W (quantizedDoraNorm), and W dequantized to f32 only inside
 * withDense. A quantized W cannot be written, so there is no assign: merging goes to a
 * dequantized copy.
 */
export interface QuantizedFrozenWeight {
  readonly outFeatures: number;
  readonly inFeatures: number;
  readonly quantized: QuantizedWeight;
  apply(x: Tensor): Tensor;
  doraNorm(a: Tensor, b: Tensor, s: number): Tensor;
  withDense<T>(fn: (w: Tensor) => T): T;
}

export function quantizedFrozenWeight(q: QuantizedWeight): QuantizedFrozenWeight {
  return {
    outFeatures: q.rows,
    inFeatures: q.cols,
    quantized: q,
    apply: (x) => quantizedLinear(x, q),
    doraNorm: (a, b, s) => quantizedDoraNorm(q, a, b, s),
    withDense: <T>(fn: (w: Tensor) => T): T => {
      const w = dequantize(q);
      try {
        return scope(() => fn(w));
      } finally {
        w.dispose();
      }
    },
  };
}

/** For an adapter's injection: the quantized frozen weight of a Linear that holds one, else undefined. */
export function frozenWeightOfQuantized(_name: string, target: Linear): QuantizedFrozenWeight | undefined {
  return target.quantized === null ? undefined : quantizedFrozenWeight(target.quantized);
}
