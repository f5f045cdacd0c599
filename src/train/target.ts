// What the trainer trains, independent of how adapters are built: a causal LM whose
// forward gives logits, and a TrainTarget naming the tensors that train, how to save
// them, the random stream their forward draws from (adapter dropout), and, for LoRA
// and DoRA, the adapted modules, whose movement the trainer logs and checks.
//
// src/adapters provides these for LoRA / DoRA (see adapters.ts here); a full-parameter
// target (fullParameterTarget) trains chosen tensors of the model itself.
import type { Backend } from '../backend/backend.js';
import type { DropoutState } from '../ops/dropout.js';
import { writeSafetensors } from '../io/safetensors.js';
import type { Tensor } from '../tensor/tensor.js';
import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * A model the trainer can run: ids int32 [B, T] -> logits f32 [B, T, V], or with `rows`
 * the logits at those positions of the flattened [B·T] sequence, [rows.length, V].
 */
export interface CausalLM {
  readonly backend: Backend;
  forward(ids: Tensor, opts?: { rows?: readonly number[] }): Tensor;
  /** Training mode on (dropout active) or off. */
  train(mode?: boolean): unknown;
}

/** One Linear layer with a LoRA (or DoRA) adapter. */
export interface AdaptedModule {
  /** Module path, e.g. model.layers.0.self_attn.q_proj. */
  readonly name: string;
  /** The layer's kind, e.g. q_proj (its last name component). */
  readonly type: string;
  /** lora_A [r, in]. */
  readonly loraA: Tensor;
  /** lora_B [out, r]. */
  readonly loraB: Tensor;
  /** DoRA's lora_magnitude_vector [out], or null for plain LoRA. */
  readonly magnitude: Tensor | null;
  /** s = lora_alpha / r (or / sqrt(r) with rsLoRA). */
  readonly scale: number;
  /** ‖W‖_F of the frozen base weight (dequantized when quantized). */
  readonly weightNorm: number;
}

export interface TrainTarget {
  /** The tensors that train (f32, contiguous, requiresGrad), by the names checkpoints use. */
  readonly parameters: readonly (readonly [string, Tensor])[];
  /** Adapted modules for movement logs and the DoRA check; empty for full-parameter training. */
  readonly modules: readonly AdaptedModule[];
  /** True for DoRA: the trainer then requires every module's magnitude to train. */
  readonly useDora: boolean;
  /** Where the forward's random stream (dropout) stands, or null when it draws none. */
  rngState(): DropoutState | null;
  restoreRngState(state: DropoutState | null): void;
  /** Writes the trained result in its final format (a PEFT adapter) into dir, which it creates. */
  save(dir: string): void;
}

/**
 * Trains the named tensors of a model directly (every other tensor stays frozen) and
 * saves them as trained.safetensors: the trainer's test target, and what a
 * full-parameter mode builds on.
 */
export function fullParameterTarget(named: readonly (readonly [string, Tensor])[]): TrainTarget {
  for (const [name, t] of named) {
    if (t.dtype !== 'f32') throw new Error(`full-parameter training needs f32 tensors; '${name}' is ${t.dtype}`);
    t.requiresGrad = true;
  }
  return {
    parameters: named,
    modules: [],
    useDora: false,
    rngState: () => null,
    restoreRngState: () => {},
    save: (dir) => {
      fs.mkdirSync(dir, { recursive: true });
      writeSafetensors(path.join(dir, 'trained.safetensors'), Object.fromEntries(named));
    },
  };
}
