// Values that a checkpointed segment's forward computes without gradient and that its
// recomputation in backward would compute again, bit for bit, from the same weights
// (DoRA's weight norm: a constant in backward, and no weight changes between a step's
// forward and its backward). Gradient checkpointing (src/train/grad_checkpoint.ts)
// runs the forward recording such values in a memo and the recomputation replaying
// them, so the recomputation does not launch their kernels again.
//
// A value is keyed by the object that computes it (one DoRA layer); a key met twice in
// one recording keeps its first value only. Outside a recording or replay,
// recomputable() just computes.
import { keep, type Tensor } from '../tensor/tensor.js';

/** The values one checkpointed segment recorded, until its backward has replayed them. */
export class RecomputeMemo {
  private readonly values = new Map<object, Tensor>();

  /** Frees every recorded value (after the segment's backward has run). */
  dispose(): void {
    for (const v of this.values.values()) v.dispose();
    this.values.clear();
  }

  get(key: object): Tensor | undefined {
    return this.values.get(key);
  }

  /** Keeps v for key (no scope frees it; dispose() does); false when key has a value already. */
  put(key: object, v: Tensor): boolean {
    if (this.values.has(key)) return false;
    this.values.set(key, keep(v));
    return true;
  }
}

let active: { readonly memo: RecomputeMemo; readonly replay: boolean } | null = null;

/**
 * compute(), recorded in the memo of the checkpointed forward running now, or taken from
 * it while that forward is recomputed (then compute is not called). The value must not
 * depend on anything that changes between the two (no gradient flows through it).
 */
export function recomputable(key: object, compute: () => Tensor): Tensor {
  const a = active;
  if (a === null) return compute();
  if (a.replay) return a.memo.get(key) ?? compute();
  const v = compute();
  a.memo.put(key, v);
  return v;
}

/** Runs fn recording recomputable values into memo (replay false) or taking them from it (replay true). */
export function withRecomputeMemo<T>(memo: RecomputeMemo, replay: boolean, fn: () => T): T {
  const saved = active;
  active = { memo, replay };
  try {
    return fn();
  } finally {
    active = saved;
  }
}
