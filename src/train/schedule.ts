// Learning-rate schedules with linear warmup, as transformers defines them
// (optimization.py): the rate of optimizer step k (0-based) is base · λ(k), with
//
//   warmup (k < W):        λ = k / max(1, W)        (step 0 runs at rate 0, as in transformers)
//   cosine  (get_cosine_schedule_with_warmup, num_cycles 0.5):
//                          λ = max(0, ½ (1 + cos(π · 2 · 0.5 · p))),  p = (k − W) / max(1, N − W)
//   linear  (get_linear_schedule_with_warmup):
//                          λ = max(0, (N − k) / max(1, N − W))
//   constant (get_constant_schedule_with_warmup): λ = 1
//
// N is the run's number of optimizer steps.
import type { LrScheduler } from './config.js';

export function lrLambda(kind: LrScheduler, step: number, warmupSteps: number, totalSteps: number): number {
  if (step < warmupSteps) return step / Math.max(1, warmupSteps);
  switch (kind) {
    case 'constant':
      return 1;
    case 'linear':
      return Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmupSteps));
    case 'cosine': {
      const progress = (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 2 * 0.5 * progress)));
    }
  }
}

export class LrSchedule {
  constructor(
    readonly kind: LrScheduler,
    readonly baseLr: number,
    readonly warmupSteps: number,
    readonly totalSteps: number,
  ) {}

  /** The rate of optimizer step k (0-based). */
  at(step: number): number {
    return this.baseLr * lrLambda(this.kind, step, this.warmupSteps, this.totalSteps);
  }
}
