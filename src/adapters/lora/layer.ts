// A LoRA layer on a frozen Linear, as PEFT's lora.Linear (Hu et al. 2021, "LoRA:
// Low-Rank Adaptation of Large Language Models"):
//
//   y = W·x + b + s · B·A·dropout(x),   A = lora_A [r, in], B = lora_B [out, r]
//
// with PEFT's initialisation (A kaiming-uniform with a = √5, i.e. U(±1/√in); B = 0, so
// the adapted layer starts equal to the base) and scaling s = lora_alpha / r (or
// lora_alpha / √r with rsLoRA). A variant (DoRA, dora.ts) changes the forward, the
// merge and the unmerge; the layer hands those off to it, as PEFT's LoraVariant.
//
// The layer takes the Linear's place by replacing its forward() (the Linear's single
// entry point, see nn/linear.ts) and hangs its parameters under the Linear, so they
// carry PEFT's names: q_proj.lora_A.weight, q_proj.lora_B.weight and, for DoRA,
// q_proj.lora_magnitude_vector.weight (PEFT's in-memory name; the saved key drops
// ".weight", see peft.ts). The Linear's previous forward — a plain matmul, or whatever
// a quantized base put there — is kept and called for the frozen W·x + b.
//
// A, B (and DoRA's magnitude) stay f32 master weights whatever the model computes in.
// With bf16 activations, x̃ = dropout(x) is bf16 and the branch's products run in bf16
// with f32 accumulation (A and B rounded for the product, as under torch.autocast; see
// loraBranch), so the layer's output keeps the activation dtype.
import { noGrad } from '../../autograd/tape.js';
import { add, mul, sub } from '../../ops/binary.js';
import { uniform, zeros } from '../../ops/creation.js';
import { dropout, dropoutLinear, type DropoutGenerator } from '../../ops/dropout.js';
import { assign } from '../../ops/inplace.js';
import { linear, matmul } from '../../ops/matmul.js';
import { computeDtype } from '../../ops/util.js';
import { cast } from '../../ops/view.js';
import type { Linear } from '../../nn/linear.js';
import { Module } from '../../nn/module.js';
import { quantizedFrozenWeight } from '../../quant/model.js';
import type { Rng } from '../../tensor/rng.js';
import { scope, type Tensor } from '../../tensor/tensor.js';
import type { DropoutSemantics, LayerHyperparameters } from './config.js';

/**
 * The frozen base weight W [out, in] as an adapter needs it. A plain Linear's is its
 * weight tensor (denseFrozenWeight); a quantized base provides its own (products and
 * DoRA's norm through its decoding kernels, a dequantized copy for the few things that
 * need W itself).
 */
export interface FrozenWeight {
  readonly outFeatures: number;
  readonly inFeatures: number;
  /** x [..., in] -> x·Wᵀ [..., out], no bias; gradients flow to x only. */
  apply(x: Tensor): Tensor;
  /**
   * DoRA's ‖W + s·B·A‖ per row (src/ops/dora.ts doraNorm) computed from W as it is held,
   * f32 [out], no gradient; present where that avoids a dense copy of W (a quantized base).
   */
  readonly doraNorm?: (a: Tensor, b: Tensor, s: number) => Tensor;
  /** Runs fn with W as a tensor (f32 or bf16); the tensor is only valid inside fn. */
  withDense<T>(fn: (w: Tensor) => T): T;
  /** Overwrites W with f32 values [out, in] (merge, unmerge); absent when W cannot be written. */
  readonly assign?: (w: Tensor) => void;
}

/**
 * The frozen weight of a Linear as it holds it: quantized (src/quant/: products through
 * the quantized kernel, W dequantized for the norm only) or dense.
 */
export function frozenWeightOf(target: Linear): FrozenWeight {
  const q = target.quantized;
  return q === null ? denseFrozenWeight(target) : quantizedFrozenWeight(q);
}

/** The FrozenWeight of a Linear whose weight is a dense f32 or bf16 tensor. */
export function denseFrozenWeight(target: Linear): FrozenWeight {
  const w = target.weight;
  return {
    outFeatures: w.shape[0],
    inFeatures: w.shape[1],
    apply: (x) => matmul(x, w, { transB: true }),
    withDense: (fn) => fn(w),
    assign: (v) => assign(w, v),
  };
}

/** A parameter holder named as PEFT's sub-modules are: <name>.weight. */
export class AdapterWeight extends Module {
  readonly weight: Tensor;
  constructor(weight: Tensor, name: string) {
    super();
    weight.requiresGrad = true;
    weight.name = name;
    this.weight = this.registerParameter('weight', weight);
  }
}

/**
 * What a LoRA variant overrides (PEFT's LoraVariant): its own parameters, the forward
 * given the base output, and merging into / out of the base weight.
 */
export interface LoraVariant {
  /** Sub-modules the variant hangs under the Linear, by name (DoRA: lora_magnitude_vector). */
  readonly modules: ReadonlyMap<string, AdapterWeight>;
  /** y given x and the base layer's output W·x + b. */
  forward(layer: LoraLayer, x: Tensor, base: Tensor): Tensor;
  /** W' (f32 [out, in]) from the base weight W. */
  merge(layer: LoraLayer, w: Tensor): Tensor;
  /** W from the merged W'. */
  unmerge(layer: LoraLayer, merged: Tensor): Tensor;
  /** Forgets values derived from the weights (call after changing W, A or B in eval mode). */
  invalidate(): void;
}

/** Builds the variant of a layer (after lora_A and lora_B exist). */
export type VariantFactory = (layer: LoraLayer) => LoraVariant;

export interface LoraLayerOptions {
  readonly hyper: LayerHyperparameters;
  readonly lora_dropout: number;
  readonly dropoutSemantics: DropoutSemantics;
  /** Draws lora_A's initial values. */
  readonly rng: Rng;
  /** Dropout masks while training; required when lora_dropout > 0. */
  readonly dropout: DropoutGenerator | null;
  readonly variant: VariantFactory | null;
  /** The frozen weight; default: frozenWeightOf(target). */
  readonly frozen?: FrozenWeight;
}

const adapted = new WeakMap<Linear, LoraLayer>();

/** The LoRA layer on a Linear, if it has one. */
export function loraLayerOf(target: Linear): LoraLayer | undefined {
  return adapted.get(target);
}

export class LoraLayer {
  readonly r: number;
  readonly lora_alpha: number;
  readonly scaling: number;
  readonly lora_dropout: number;
  readonly dropoutSemantics: DropoutSemantics;
  readonly lora_A: AdapterWeight;
  readonly lora_B: AdapterWeight;
  readonly variant: LoraVariant | null;
  readonly frozen: FrozenWeight;
  private readonly originalForward: (x: Tensor) => Tensor;
  private readonly dropoutGen: DropoutGenerator | null;
  private _merged = false;
  private unloaded = false;

  /** Puts a LoRA layer on `target` (named `name` in its model). */
  constructor(readonly name: string, readonly target: Linear, opts: LoraLayerOptions) {
    if (adapted.has(target)) throw new Error(`${name} already has a LoRA adapter`);
    const { r, lora_alpha, scaling } = opts.hyper;
    if (!Number.isInteger(r) || r <= 0) throw new Error(`${name}: r must be a positive integer, got ${r}`);
    if (opts.lora_dropout > 0 && opts.dropout === null) throw new Error(`${name}: lora_dropout ${opts.lora_dropout} needs a dropout generator`);
    this.r = r;
    this.lora_alpha = lora_alpha;
    this.scaling = scaling;
    this.lora_dropout = opts.lora_dropout;
    this.dropoutSemantics = opts.dropoutSemantics;
    this.dropoutGen = opts.dropout;
    this.frozen = opts.frozen ?? frozenWeightOf(target);
    const { outFeatures: out, inFeatures: inF } = this.frozen;
    const device = target.weight.backend;
    // PEFT: nn.init.kaiming_uniform_(lora_A, a=√5): gain √(2/(1+5)), bound gain·√(3/in) = 1/√in.
    const bound = 1 / Math.sqrt(inF);
    const made: Module[] = [];
    try {
      this.lora_A = new AdapterWeight(uniform([r, inF], -bound, bound, opts.rng, { device }), `${name}.lora_A.weight`);
      made.push(this.lora_A);
      this.lora_B = new AdapterWeight(zeros([out, r], { device }), `${name}.lora_B.weight`);
      made.push(this.lora_B);
      this.variant = opts.variant === null ? null : opts.variant(this);
    } catch (e) {
      for (const m of made) m.dispose();
      throw e;
    }
    target.setAdapterModule('lora_A', this.lora_A);
    target.setAdapterModule('lora_B', this.lora_B);
    for (const [n, m] of this.variant?.modules ?? []) target.setAdapterModule(n, m);
    this.originalForward = target.forward;
    target.forward = (x: Tensor) => this.forward(x);
    adapted.set(target, this);
  }

  get merged(): boolean {
    return this._merged;
  }

  get training(): boolean {
    return this.target.training;
  }

  /** The adapter's tensors under their in-memory names (lora_A.weight, ..., lora_magnitude_vector.weight). */
  *namedTensors(): Generator<[string, Tensor]> {
    yield ['lora_A.weight', this.lora_A.weight];
    yield ['lora_B.weight', this.lora_B.weight];
    for (const [n, m] of this.variant?.modules ?? []) yield [`${n}.weight`, m.weight];
  }

  /** The frozen layer as it was before the adapter: W·x + b. */
  baseForward(x: Tensor): Tensor {
    return this.originalForward.call(this.target, x);
  }

  /** x̃: dropout(x) while training with lora_dropout > 0, else x itself. */
  dropoutInput(x: Tensor): Tensor {
    if (!this.training || this.lora_dropout === 0 || this.dropoutGen === null) return x;
    return dropout(x, this.lora_dropout, this.dropoutGen);
  }

  /**
   * scale·B·A·x, x [..., in] -> [..., out] in x's compute dtype. A and B are f32
   * master weights; where x computes in bf16 both products run in bf16 with f32
   * accumulation, A and B rounded for the product as torch.autocast rounds them (their
   * gradients come back through the casts in f32). Widening x instead would move the
   * [..., in] input and the [..., out] result through memory in f32 twice per layer.
   */
  loraBranch(x: Tensor, scale = 1): Tensor {
    const t = computeDtype(x.backend, x);
    // A scale is applied to the [out, r] B, not to the [..., out] result: one less pass
    // over (and one less live copy of) an activation-sized tensor.
    const b = cast(this.lora_B.weight, t);
    return linear(linear(x, cast(this.lora_A.weight, t)), scale === 1 ? b : mul(b, scale));
  }

  /**
   * loraBranch(dropoutInput(x), scale) with the same values, gradients and draws from
   * the dropout stream, but A's product redraws the mask in backward (dropoutLinear):
   * backward keeps x, which the other adapters on the same input keep too, instead of
   * a dropped copy of its own.
   */
  droppedLoraBranch(x: Tensor, scale = 1): Tensor {
    if (!this.training || this.lora_dropout === 0 || this.dropoutGen === null || x.rank < 2) return this.loraBranch(this.dropoutInput(x), scale);
    const t = computeDtype(x.backend, x);
    const b = cast(this.lora_B.weight, t);
    return linear(dropoutLinear(x, cast(this.lora_A.weight, t), this.lora_dropout, this.dropoutGen), scale === 1 ? b : mul(b, scale));
  }

  /**
   * y = W·x + b + s·B·A·x̃, or the variant's forward. A merged layer is its base. The
   * scope frees what backward does not read (the base output, the branch's result)
   * as soon as y exists.
   */
  forward(x: Tensor): Tensor {
    if (this.unloaded) throw new Error(`${this.name}: the adapter was unloaded`);
    return scope(() => {
      const base = this.baseForward(x);
      if (this._merged) return base;
      if (this.variant !== null) return this.variant.forward(this, x, base);
      return add(base, cast(this.droppedLoraBranch(x, this.scaling), base.dtype));
    });
  }

  /** s·B·A, f32 [out, in] (PEFT's get_delta_weight), without gradient. */
  deltaWeight(): Tensor {
    return noGrad(() => scope(() => mul(matmul(this.lora_B.weight, this.lora_A.weight), this.scaling)));
  }

  /** Folds the adapter into the base weight (W + s·B·A, or the variant's W'); forward then runs the base alone. */
  merge(): void {
    if (this._merged) return;
    this.writeWeight((w) => (this.variant !== null ? this.variant.merge(this, w) : add(w, this.deltaWeight())));
    this._merged = true;
  }

  /** Takes the adapter back out of the base weight (up to rounding in W's dtype). */
  unmerge(): void {
    if (!this._merged) return;
    this.writeWeight((w) => (this.variant !== null ? this.variant.unmerge(this, w) : sub(w, this.deltaWeight())));
    this._merged = false;
  }

  private writeWeight(update: (w: Tensor) => Tensor): void {
    const write = this.frozen.assign;
    if (write === undefined) throw new Error(`${this.name}: its base weight cannot be written (quantized?); merge into a dequantized copy instead`);
    noGrad(() =>
      scope(() => {
        const next = this.frozen.withDense((w) => update(cast(w, 'f32')));
        write(next);
      }),
    );
    this.variant?.invalidate();
  }

  /** Forgets values derived from the weights; call after writing A, B or the magnitude in eval mode. */
  invalidate(): void {
    this.variant?.invalidate();
  }

  /** Restores the plain Linear (merged or not, as it is now) and frees the adapter's tensors. */
  unload(): void {
    if (this.unloaded) return;
    this.target.forward = this.originalForward;
    this.target.setAdapterModule('lora_A', null);
    this.target.setAdapterModule('lora_B', null);
    for (const [n] of this.variant?.modules ?? []) this.target.setAdapterModule(n, null);
    this.lora_A.dispose();
    this.lora_B.dispose();
    for (const [, m] of this.variant?.modules ?? []) m.dispose();
    this.variant?.invalidate();
    adapted.delete(this.target);
    this.unloaded = true;
  }
}
