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
// The update writes into the parameter and state buffers themselves. A backend with
// the fused multi-tensor kernel (kernels.ts adamw; native/cpu/kernels/adamw.cc) does
// every parameter in one call. Otherwise the same arithmetic runs as elementwise
// kernel calls: each parameter viewed flat, per-step scalars in one small tensor whose
// elements are broadcast (stride 0) views, and one scratch buffer shared by all, so a
// step allocates nothing per parameter. Gradient clipping's coefficient is applied to
// the gradients as they are read, so they need not be rescaled in place. The global
// gradient norm (torch.nn.utils.clip_grad_norm_) is here too.
import { kernel } from '../backend/backend.js';
import { tensor } from '../ops/creation.js';
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

/** Throws unless t is a contiguous f32 tensor (what the update kernels take). */
function checkFlat(t: Tensor): void {
  if (!t.isContiguous()) throw new Error(`AdamW: parameter${t.name ? ` '${t.name}'` : ''} is not contiguous`);
  if (t.dtype !== 'f32') throw new Error(`AdamW: parameter${t.name ? ` '${t.name}'` : ''} is ${t.dtype}; trainable parameters must be f32`);
}

function flat(t: Tensor): Tensor {
  checkFlat(t);
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

  /**
   * One update of every parameter that has a gradient (parameters without one are
   * skipped, as torch skips them), each gradient first multiplied by gradScale (the
   * clipping coefficient, so gradients need not be rescaled in place). Runs the
   * backend's fused multi-tensor adamw kernel when it has one, else the same update as
   * a sequence of elementwise kernels.
   */
  step(gradScale = 1): void {
    this.stepCount++;
    const t = this.stepCount;
    const live = this.params.map((p, i) => ({ p, i })).filter(({ p }) => p.grad !== null);
    if (live.length === 0) return;
    const backend = live[0].p.backend;
    const attrs = {
      lr: this.lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay: this.weightDecay,
      biasCorrection1: 1 - this.beta1 ** t, biasCorrection2: 1 - this.beta2 ** t, gradScale,
    };
    if (backend.kernels.adamw !== undefined) {
      // The fused kernel reads each operand as its contiguous elements: no flat views needed.
      const operands = live.map(({ p, i }) => {
        const grad = p.grad!;
        checkFlat(grad);
        return { param: p, grad, expAvg: this.state[i].expAvg, expAvgSq: this.state[i].expAvgSq };
      });
      kernel(backend, 'adamw')(operands, attrs);
      return;
    }
    this.composedStep(live, attrs);
  }

  private composedStep(live: { p: Tensor; i: number }[], a: { lr: number; biasCorrection1: number; biasCorrection2: number; gradScale: number }): void {
    const largest = Math.max(...live.map(({ p }) => p.size));
    const backend = live[0].p.backend;
    if (this.scratch === null || this.scratch.size < 2 * largest) {
      this.scratch?.dispose();
      this.scratch = keep(empty([2 * largest], 'f32', backend));
    }
    const scratch = this.scratch;
    const binary = kernel(backend, 'binary');
    const unary = kernel(backend, 'unary');
    scope(() => {
      // decay, 1-β1, β2, 1-β2, √(1-β2^t), ε, -lr/(1-β1^t), gradient scale
      const values = [1 - a.lr * this.weightDecay, 1 - this.beta1, this.beta2, 1 - this.beta2, Math.sqrt(a.biasCorrection2), this.eps, -a.lr / a.biasCorrection1, a.gradScale];
      const scalars = tensor(values, [values.length], { device: backend });
      for (const { p: param, i } of live) {
        scope(() => {
          const n = param.size;
          const s = (k: number) => view(scalars, [n], [0], k);
          const p = flat(param);
          const m = flat(this.state[i].expAvg);
          const v = flat(this.state[i].expAvgSq);
          const tmp = view(scratch, [n], [1], 0);
          let g = flat(param.grad!);
          if (a.gradScale !== 1) {
            const scaled = view(scratch, [n], [1], largest);
            binary('mul', g, s(7), scaled);
            g = scaled;
          }
          if (this.weightDecay !== 0) binary('mul', p, s(0), p);
          binary('sub', g, m, tmp);
          binary('mul', tmp, s(1), tmp);
          binary('add', m, tmp, m);
          binary('mul', v, s(2), v);
          binary('mul', g, g, tmp);
          binary('mul', tmp, s(3), tmp);
          binary('add', v, tmp, v);
          unary('sqrt', v, tmp);
          binary('div', tmp, s(4), tmp);
          binary('add', tmp, s(5), tmp);
          binary('div', m, tmp, tmp);
          binary('mul', tmp, s(6), tmp);
          binary('add', p, tmp, p);
        });
      }
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
 * The global L2 norm of the gradients of `params` (parameters without one count as
 * zero): each gradient's sum of squares (in f64) into its slot of one small tensor,
 * which is read once. A backend with the multi-tensor sumSquares kernel does all of
 * them in one call; elsewhere each gradient is squared into one shared scratch buffer
 * and summed by the reduce kernel, which gives the same values.
 */
export function gradNorm(params: readonly Tensor[]): number {
  const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
  if (grads.length === 0) return 0;
  const backend = grads[0].backend;
  const sumSquares = backend.kernels.sumSquares;
  if (sumSquares !== undefined && grads.every((g) => g.dtype === 'f32' && g.isContiguous())) {
    return scope(() => {
      const sums = empty([grads.length], 'f32', backend);
      sumSquares(grads, sums);
      let total = 0;
      for (const v of sums.toArray()) total += v;
      return Math.sqrt(total);
    });
  }
  return scope(() => {
    const scratch = empty([Math.max(...grads.map((g) => g.size))], 'f32', backend);
    const sums = empty([grads.length], 'f32', backend);
    const unary = kernel(backend, 'unary');
    const reduce = kernel(backend, 'reduce');
    grads.forEach((g, i) =>
      scope(() => {
        const gf = flat(g);
        const sq = view(scratch, [gf.size], [1], 0);
        unary('square', gf, sq);
        reduce('sum', sq, view(sums, [1], [1], i), { outer: 1, n: gf.size, inner: 1 });
      }),
    );
    let total = 0;
    for (const v of sums.toArray()) total += v;
    return Math.sqrt(total);
  });
}

/** torch.nn.utils.clip_grad_norm_'s coefficient: min(1, maxNorm / (norm + 1e-6)); 1 when maxNorm is 0 (no clipping). */
export function clipCoefficient(norm: number, maxNorm: number): number {
  return maxNorm > 0 && Number.isFinite(norm) ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
}

/**
 * The global L2 norm of the gradients, and, when maxNorm > 0, every gradient scaled in
 * place by clipCoefficient, as torch.nn.utils.clip_grad_norm_ does. A non-finite norm
 * leaves the gradients as they are (the caller stops the run).
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): number {
  const norm = gradNorm(params);
  const coef = clipCoefficient(norm, maxNorm);
  if (coef < 1) {
    const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
    scope(() => {
      const c = tensor([coef], [1], { device: grads[0].backend });
      for (const g of grads) {
        const gf = flat(g);
        kernel(g.backend, 'binary')('mul', gf, view(c, [gf.size], [0], 0), gf);
      }
    });
  }
  return norm;
}
