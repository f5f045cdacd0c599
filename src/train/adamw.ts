// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization") with PyTorch's
// torch.optim.AdamW semantics, for f32 parameters, updated in place:
//
//   p ← p · (1 − lr·λ)                       decoupled weight decay
//   m ← m + (1 − β1)·(g − m)                 torch's exp_avg.lerp_(g, 1 − β1)
//   v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//
// with t the 1-based step count. Defaults: β = (0.9, 0.999), ε = 1e-8, λ = 0.01 as in
// PyTorch (FinLoRA's runs pass weight_decay 0).
//
// The update runs as kernel calls that write into the parameter and state buffers
// themselves: each parameter is viewed flat, per-step scalars live in one small tensor
// whose elements are broadcast (stride 0) views, and one scratch buffer the size of
// the largest parameter is shared by all, so a step allocates nothing per parameter.
// Gradient clipping by global norm is here too (torch.nn.utils.clip_grad_norm_).
import { kernel } from '../backend/backend.js';
import { stack } from '../ops/concat.js';
import { tensor } from '../ops/creation.js';
import { sum } from '../ops/reduce.js';
import { mul } from '../ops/binary.js';
import { empty, keep, scope, type Tensor, view } from '../tensor/tensor.js';

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

/** One parameter's optimizer state. */
export interface AdamState {
  readonly expAvg: Tensor;
  readonly expAvgSq: Tensor;
}

function flat(t: Tensor): Tensor {
  if (!t.isContiguous()) throw new Error(`AdamW: parameter${t.name ? ` '${t.name}'` : ''} is not contiguous`);
  if (t.dtype !== 'f32') throw new Error(`AdamW: parameter${t.name ? ` '${t.name}'` : ''} is ${t.dtype}; trainable parameters must be f32`);
  return view(t, [t.size], [1], t.offset);
}

export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  lr: number;
  /** Optimizer steps taken (torch's state['step']). */
  stepCount = 0;
  private readonly state: AdamState[];
  private scratch: Tensor | null = null;

  constructor(readonly params: readonly Tensor[], opts: AdamWOptions) {
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    this.state = params.map((p) => {
      flat(p).dispose();
      const zero = (): Tensor => {
        const t = keep(empty(p.shape, 'f32', p.backend));
        kernel(p.backend, 'fill')(t, 0);
        return t;
      };
      return { expAvg: zero(), expAvgSq: zero() };
    });
  }

  /** exp_avg and exp_avg_sq of parameter i (for checkpoints). */
  stateOf(i: number): AdamState {
    return this.state[i];
  }

  /** One update of every parameter that has a gradient; parameters without one are skipped (as torch does). */
  step(): void {
    this.stepCount++;
    const t = this.stepCount;
    const lr = this.lr;
    const bc1 = 1 - this.beta1 ** t;
    const bc2Sqrt = Math.sqrt(1 - this.beta2 ** t);
    const largest = Math.max(...this.params.map((p) => p.size));
    if (this.params.length === 0) return;
    const backend = this.params[0].backend;
    if (this.scratch === null || this.scratch.size < largest) {
      this.scratch?.dispose();
      this.scratch = keep(empty([largest], 'f32', backend));
    }
    const scratch = this.scratch;
    const binary = kernel(backend, 'binary');
    const unary = kernel(backend, 'unary');
    scope(() => {
      // decay, 1-β1, β2, 1-β2, √(1-β2^t), ε, -lr/(1-β1^t)
      const scalars = tensor([1 - lr * this.weightDecay, 1 - this.beta1, this.beta2, 1 - this.beta2, bc2Sqrt, this.eps, -lr / bc1], [7], { device: backend });
      this.params.forEach((param, i) => {
        const g = param.grad;
        if (g === null) return;
        scope(() => {
          const n = param.size;
          const s = (k: number) => view(scalars, [n], [0], k);
          const p = flat(param);
          const gf = flat(g);
          const m = flat(this.state[i].expAvg);
          const v = flat(this.state[i].expAvgSq);
          const tmp = view(scratch, [n], [1], 0);
          if (this.weightDecay !== 0) binary('mul', p, s(0), p);
          binary('sub', gf, m, tmp);
          binary('mul', tmp, s(1), tmp);
          binary('add', m, tmp, m);
          binary('mul', v, s(2), v);
          binary('mul', gf, gf, tmp);
          binary('mul', tmp, s(3), tmp);
          binary('add', v, tmp, v);
          unary('sqrt', v, tmp);
          binary('div', tmp, s(4), tmp);
          binary('add', tmp, s(5), tmp);
          binary('div', m, tmp, tmp);
          binary('mul', tmp, s(6), tmp);
          binary('add', p, tmp, p);
        });
      });
    });
  }

  /** Frees the optimizer state. */
  dispose(): void {
    for (const s of this.state) {
      s.expAvg.dispose();
      s.expAvgSq.dispose();
    }
    this.scratch?.dispose();
    this.scratch = null;
  }
}

/**
 * The global L2 norm of the gradients (parameters without one count as zero), and,
 * when maxNorm > 0, every gradient scaled by min(1, maxNorm / (norm + 1e-6)) in place,
 * as torch.nn.utils.clip_grad_norm_ does. A non-finite norm leaves the gradients as
 * they are (the caller stops the run).
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): number {
  const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
  if (grads.length === 0) return 0;
  const norm = scope(() => {
    const squares = stack(grads.map((g) => sum(mul(g, g))));
    return Math.sqrt(sum(squares).item());
  });
  if (maxNorm > 0 && Number.isFinite(norm)) {
    const coef = Math.min(1, maxNorm / (norm + 1e-6));
    if (coef < 1) {
      scope(() => {
        const c = tensor([coef], [1], { device: grads[0].backend });
        for (const g of grads) {
          const gf = flat(g);
          kernel(g.backend, 'binary')('mul', gf, view(c, [gf.size], [0], 0), gf);
        }
      });
    }
  }
  return norm;
}
