// A run's LoRA / DoRA adapters as the trainer's TrainTarget: injected into the model by
// src/adapters (PEFT's get_peft_model) with the run's r, lora_alpha, lora_dropout,
// target_modules, use_dora and use_rslora, trained as PEFT names them, saved as a PEFT
// adapter directory (adapter_config.json + adapter_model.safetensors).
//
// lora_A's initial values and the dropout masks both come from the run's seed, so one
// seed gives one adapter. The dropout generator is counter based; a checkpoint records
// its position, and a resumed run moves the fresh generator there.
import { LoraModel, type InjectOptions } from '../adapters/lora/model.js';
import type { DropoutSemantics } from '../adapters/lora/config.js';
import { savePeftAdapter } from '../adapters/peft.js';
import { noGrad } from '../autograd/tape.js';
import type { Module } from '../nn/module.js';
import type { DropoutState } from '../ops/dropout.js';
import { mul } from '../ops/binary.js';
import { sum } from '../ops/reduce.js';
import { cast } from '../ops/view.js';
import { scope } from '../tensor/tensor.js';
import type { AdaptedModule, TrainTarget } from './target.js';

export interface AdapterSpec {
  readonly r: number;
  readonly alpha: number;
  readonly dropout: number;
  readonly targetModules: readonly string[];
  readonly useDora: boolean;
  readonly useRslora: boolean;
  /** Written into adapter_config.json as base_model_name_or_path. */
  readonly baseModel: string;
  readonly seed: number;
  readonly dropoutSemantics?: DropoutSemantics;
  /** The frozen weight of a quantized base's layers (see src/adapters/lora/model.ts). */
  readonly frozenWeight?: InjectOptions['frozenWeight'];
}

/** Puts the run's adapters into `model` and describes them for the trainer. */
export function injectAdapters(model: Module, spec: AdapterSpec): { target: TrainTarget; lora: LoraModel } {
  const lora = LoraModel.inject(
    model,
    {
      r: spec.r,
      lora_alpha: spec.alpha,
      lora_dropout: spec.dropout,
      target_modules: [...spec.targetModules],
      use_dora: spec.useDora,
      use_rslora: spec.useRslora,
      base_model_name_or_path: spec.baseModel,
      ...(spec.dropoutSemantics !== undefined ? { dropout_semantics: spec.dropoutSemantics } : {}),
    },
    { seed: spec.seed, ...(spec.frozenWeight !== undefined ? { frozenWeight: spec.frozenWeight } : {}) },
  );
  const modules: AdaptedModule[] = [];
  for (const [name, layer] of lora.layers) {
    const tensors = new Map(layer.namedTensors());
    const weightNorm = noGrad(() => scope(() => layer.frozen.withDense((w) => Math.sqrt(sum(mul(cast(w, 'f32'), cast(w, 'f32'))).item()))));
    modules.push({
      name,
      type: name.slice(name.lastIndexOf('.') + 1),
      loraA: layer.lora_A.weight,
      loraB: layer.lora_B.weight,
      magnitude: tensors.get('lora_magnitude_vector.weight') ?? null,
      scale: layer.scaling,
      weightNorm,
    });
  }
  const target: TrainTarget = {
    parameters: [...lora.namedTensors()],
    modules,
    useDora: spec.useDora,
    rngState: (): DropoutState => lora.dropout.state(),
    restoreRngState: (state) => {
      if (state === null) return;
      const now = lora.dropout.state();
      if (state.seed !== now.seed || state.offset < now.offset) {
        throw new Error(`the checkpoint's dropout stream (seed ${state.seed}, offset ${state.offset}) does not continue this run's (seed ${now.seed}, offset ${now.offset})`);
      }
      // The generator is counter based: reserving the counters already used moves it to where the run stood.
      lora.dropout.take(state.offset - now.offset);
    },
    save: (dir) => savePeftAdapter(dir, lora),
  };
  return { target, lora };
}
