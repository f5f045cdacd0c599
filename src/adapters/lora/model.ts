// Putting LoRA / DoRA adapters into a model, as PEFT's LoraModel / get_peft_model:
// every Linear whose dotted name the config targets (config.ts) gets a LoraLayer
// (layer.ts; DoRA through its variant, dora.ts), with its own r and lora_alpha from
// rank_pattern / alpha_pattern. The base weights stay frozen; the adapter tensors are
// the model's only trainable parameters and appear in namedParameters() under PEFT's
// names (model.layers.0.self_attn.q_proj.lora_A.weight, ...).
//
// lora_A is drawn from one seeded generator in module order, so the same seed gives
// the same adapter. Dropout masks come from one counter-based generator shared by all
// layers (ops/dropout.ts), whose state a training checkpoint can save.
import { DropoutGenerator } from '../../ops/dropout.js';
import { Linear } from '../../nn/linear.js';
import type { Module } from '../../nn/module.js';
import { Rng } from '../../tensor/rng.js';
import type { Tensor } from '../../tensor/tensor.js';
import { isTargeted, layerHyperparameters, type LoraConfig, type LoraConfigInput, LoraConfigError, loraConfig } from './config.js';
import { doraVariant } from './dora.js';
import { type FrozenWeight, LoraLayer } from './layer.js';

export interface InjectOptions {
  /** Seed for lora_A's initial values (default 0). */
  readonly seed?: number;
  /** Seed of the dropout masks (default: seed). */
  readonly dropoutSeed?: number;
  /** The frozen weight of a target whose weight is not a dense tensor (a quantized base). */
  readonly frozenWeight?: (name: string, target: Linear) => FrozenWeight | undefined;
}

/** Names of a model's Linear modules, and the one that is its output head (lm_head). */
function linearModules(model: Module): { linears: [string, Linear][]; head: string | null } {
  const linears: [string, Linear][] = [];
  for (const [name, m] of model.namedModules()) if (m instanceof Linear) linears.push([name, m]);
  // PEFT's "all-linear" leaves out the output embeddings; in a causal LM that is lm_head.
  const head = linears.some(([n]) => n === 'lm_head') ? 'lm_head' : null;
  return { linears, head };
}

/** Formats a count with thousands separators, as Python's "{:,d}". */
function thousands(n: number): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: 0 });
}

export interface ParameterCounts {
  readonly trainable: number;
  readonly all: number;
}

export class LoraModel {
  readonly layers: ReadonlyMap<string, LoraLayer>;
  readonly dropout: DropoutGenerator;

  private constructor(readonly model: Module, readonly config: LoraConfig, layers: Map<string, LoraLayer>, dropout: DropoutGenerator) {
    this.layers = layers;
    this.dropout = dropout;
  }

  /** The modules the config selects in `model`, in module order; throws when it selects none. */
  static targets(model: Module, config: LoraConfig): [string, Linear][] {
    const { linears, head } = linearModules(model);
    const picked: [string, Linear][] = [];
    for (const [name, m] of model.namedModules()) {
      if (name === '' || !isTargeted(config, name, name === head, m instanceof Linear)) continue;
      if (!(m instanceof Linear)) {
        // PEFT refuses a matched module it has no layer for; so do we.
        throw new LoraConfigError(`target_modules selects ${name} (${m.constructor.name}), but LoRA adapters go on Linear layers only`);
      }
      picked.push([name, m]);
    }
    if (picked.length === 0) {
      const shown = linears.slice(0, 6).map(([n]) => n).join(', ');
      const tm = JSON.stringify(config.target_modules);
      throw new LoraConfigError(
        `target_modules ${tm} match no module of the model; its Linear modules include ${shown}${linears.length > 6 ? `, ... (${linears.length} in all)` : ''}`,
      );
    }
    return picked;
  }

  /** Puts an adapter on every targeted Linear of `model` (PEFT's get_peft_model). */
  static inject(model: Module, input: LoraConfigInput | LoraConfig, opts: InjectOptions = {}): LoraModel {
    const config = loraConfig(input);
    const targets = LoraModel.targets(model, config);
    const seed = opts.seed ?? 0;
    const rng = new Rng(seed);
    const dropout = new DropoutGenerator((opts.dropoutSeed ?? seed) >>> 0);
    const layers = new Map<string, LoraLayer>();
    try {
      for (const [name, target] of targets) {
        layers.set(
          name,
          new LoraLayer(name, target, {
            hyper: layerHyperparameters(config, name),
            lora_dropout: config.lora_dropout,
            dropoutSemantics: config.dropout_semantics,
            rng,
            dropout,
            variant: config.use_dora ? doraVariant : null,
            frozen: opts.frozenWeight?.(name, target),
          }),
        );
      }
    } catch (e) {
      for (const l of layers.values()) l.unload();
      throw e;
    }
    return new LoraModel(model, config, layers, dropout);
  }

  /** The adapter's tensors under their in-memory names (model.layers.0.self_attn.q_proj.lora_A.weight, ...). */
  *namedTensors(): Generator<[string, Tensor]> {
    for (const [name, layer] of this.layers) for (const [k, t] of layer.namedTensors()) yield [`${name}.${k}`, t];
  }

  /** The trainable tensors (lora_A, lora_B, and the magnitudes with DoRA). */
  trainableParameters(): Tensor[] {
    return [...this.namedTensors()].map(([, t]) => t);
  }

  /** Trainable and all parameters of the model, counted as PEFT's get_nb_trainable_parameters counts them. */
  parameterCounts(): ParameterCounts {
    let trainable = 0;
    let all = 0;
    const seen = new Set<Tensor>();
    for (const [, t] of this.model.namedParameters()) {
      if (seen.has(t)) continue;
      seen.add(t);
      all += t.size;
      if (t.requiresGrad) trainable += t.size;
    }
    return { trainable, all };
  }

  /** PEFT's print_trainable_parameters line: "trainable params: N || all params: M || trainable%: P". */
  summary(): string {
    const { trainable, all } = this.parameterCounts();
    return `trainable params: ${thousands(trainable)} || all params: ${thousands(all)} || trainable%: ${(all === 0 ? 0 : (100 * trainable) / all).toFixed(4)}`;
  }

  /** Folds every adapter into its base weight; forward then costs what the base costs. */
  merge(): void {
    for (const l of this.layers.values()) l.merge();
  }

  unmerge(): void {
    for (const l of this.layers.values()) l.unmerge();
  }

  get merged(): boolean {
    return [...this.layers.values()].every((l) => l.merged);
  }

  /** Forgets derived values (DoRA's cached norms); call after writing adapter tensors in eval mode. */
  invalidate(): void {
    for (const l of this.layers.values()) l.invalidate();
  }

  /** Takes every adapter out (merged ones stay merged: PEFT's merge_and_unload after merge()). */
  unload(): void {
    for (const l of this.layers.values()) l.unload();
  }
}
