// How far the adapters have moved, per module type (q_proj, k_proj, ...), and the
// check that a DoRA run really trains its magnitudes.
//
// For each adapted module: the relative magnitude change mean_i |m_i − m0_i| / |m0_i|
// (DoRA) and the relative size of the LoRA update ‖s·B·A‖_F / ‖W‖_F. ‖B·A‖_F is
// computed without forming B·A: ‖B·A‖²_F = Σ (BᵀB) ⊙ (A·Aᵀ), two r×r products.
// Values are averaged over the modules of a type.
//
// Other tools have trained "DoRA" runs whose magnitude vectors were frozen, or never
// reached by the gradient, so the run silently trained plain LoRA. The trainer
// therefore stops at once when, in a DoRA run, a magnitude is not trainable, has no
// gradient (or an all-zero one) after the first backward, or has not changed after the
// first optimizer step taken with a learning rate above zero.
import { noGrad } from '../autograd/tape.js';
import { mul } from '../ops/binary.js';
import { matmul } from '../ops/matmul.js';
import { sum } from '../ops/reduce.js';
import { contiguous } from '../ops/view.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import type { ModuleMovement } from './metrics.js';
import type { AdaptedModule } from './target.js';

/** A DoRA run whose magnitudes are not training: stopped at once. */
export class DoraCheckError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DoraCheckError';
  }
}

function hostValues(t: Tensor): Float32Array {
  return scope(() => Float32Array.from(contiguous(t).toArray()));
}

function listed(names: readonly string[]): string {
  return names.length <= 3 ? names.join(', ') : `${names.slice(0, 3).join(', ')} and ${names.length - 3} more`;
}

export class MovementMonitor {
  private readonly initial: (Float32Array | null)[];
  private movedChecked = false;
  private gradsChecked = false;

  /** Call before any training (and before a checkpoint is restored): the current magnitudes are m0. */
  constructor(private readonly modules: readonly AdaptedModule[], private readonly useDora: boolean) {
    this.initial = modules.map((m) => (m.magnitude === null ? null : hostValues(m.magnitude)));
    if (useDora) {
      const missing = modules.filter((m) => m.magnitude === null).map((m) => m.name);
      if (missing.length > 0) throw new DoraCheckError(`DoRA run, but ${missing.length} adapted module(s) have no magnitude vector (${listed(missing)})`);
      const frozen = modules.filter((m) => m.magnitude !== null && !m.magnitude.requiresGrad).map((m) => m.name);
      if (frozen.length > 0) {
        throw new DoraCheckError(`DoRA magnitudes of ${frozen.length} module(s) are frozen (${listed(frozen)}): the run would train as plain LoRA`);
      }
    }
  }

  /** After the first backward: every DoRA magnitude has a gradient that is not all zero. */
  checkGradients(): void {
    if (!this.useDora || this.gradsChecked) return;
    this.gradsChecked = true;
    const dead = this.modules
      .filter((m) => {
        const g = m.magnitude?.grad ?? null;
        return g === null || scope(() => sum(mul(g, g)).item()) === 0;
      })
      .map((m) => m.name);
    if (dead.length > 0) {
      throw new DoraCheckError(
        `DoRA magnitudes of ${dead.length} of ${this.modules.length} modules received no gradient in the first step (${listed(dead)}): ` +
          'the run would train as plain LoRA; stopping',
      );
    }
  }

  /** After the first optimizer step with lr > 0: every DoRA magnitude moved. */
  checkMoved(lr: number): void {
    if (!this.useDora || this.movedChecked || !(lr > 0)) return;
    this.movedChecked = true;
    const still = this.modules
      .filter((m, i) => {
        const now = hostValues(m.magnitude!);
        const m0 = this.initial[i]!;
        return now.every((v, k) => v === m0[k]);
      })
      .map((m) => m.name);
    if (still.length > 0) {
      throw new DoraCheckError(
        `DoRA magnitudes of ${still.length} of ${this.modules.length} modules did not change in the first optimizer step (${listed(still)}): ` +
          'they are not being trained; stopping',
      );
    }
  }

  /** Mean movement per module type. */
  measure(): Record<string, ModuleMovement> {
    const acc = new Map<string, { mag: number; upd: number; n: number }>();
    noGrad(() =>
      this.modules.forEach((m, i) => {
        const a = acc.get(m.type) ?? { mag: 0, upd: 0, n: 0 };
        const ba = scope(() => sum(mul(matmul(m.loraB, m.loraB, { transA: true }), matmul(m.loraA, m.loraA, { transB: true }))).item());
        a.upd += (Math.abs(m.scale) * Math.sqrt(Math.max(0, ba))) / (m.weightNorm > 0 ? m.weightNorm : 1);
        const m0 = this.initial[i];
        if (m0 !== null && m.magnitude !== null) {
          const now = hostValues(m.magnitude);
          let rel = 0;
          for (let k = 0; k < now.length; k++) rel += m0[k] !== 0 ? Math.abs(now[k] - m0[k]) / Math.abs(m0[k]) : 0;
          a.mag += rel / Math.max(1, now.length);
        }
        a.n++;
        acc.set(m.type, a);
      }),
    );
    const out: Record<string, ModuleMovement> = {};
    for (const [type, a] of acc) {
      out[type] = this.useDora ? { magnitude_change: a.mag / a.n, update_ratio: a.upd / a.n } : { update_ratio: a.upd / a.n };
    }
    return out;
  }

  /** One line for the log: "q_proj Δm/m0 1.2e-3 ‖sBA‖/‖W‖ 4.1e-4; ...". */
  static describe(movement: Record<string, ModuleMovement>): string {
    return Object.entries(movement)
      .map(([type, mv]) => `${type} ${mv.magnitude_change !== undefined ? `Δm/m0 ${mv.magnitude_change.toExponential(2)} ` : ''}‖sBA‖/‖W‖ ${mv.update_ratio.toExponential(2)}`)
      .join('; ');
  }
}
