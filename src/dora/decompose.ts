// DoRA's weight decomposition (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank
// Adaptation", eqs. 2 and 5; FinLoRA's DoRA documentation):
//
//   W0 = m · V/‖V‖_c  with  m = ‖W0‖_c,  V = W0
//   W' = m · (V + s·ΔV)/‖V + s·ΔV‖_c  with  ΔV = B·A
//
// ‖·‖_c is the L2 norm of each column in the docs' orientation, W0 ∈ R^{d×k}: m has k
// entries and V̂ = V/‖V‖_c has unit columns (layout 'dxk'). A Hugging Face / PyTorch
// Linear weight is [out_features, in_features], and its magnitude (PEFT's
// lora_magnitude_vector) has one entry per output row, the norm over in_features: the
// docs' column is the Linear's row, i.e. the Linear weight is the docs' Wᵀ with
// out_features = k and in_features = d, and V̂ has unit rows (layout 'linear').
// Each layout takes its own factors and forms ΔV = B·A: [d, r]·[r, k] for 'dxk',
// lora_B [out, r] · lora_A [r, in] for 'linear'; transposing the docs' update shows
// lora_B = Aᵀ and lora_A = Bᵀ. docs/design.md works this through on the docs' 4×5
// example.
//
// Everything runs through the engine's ops, so it works on any backend. A zero (or
// non-finite) norm has no direction; it is reported by index instead of producing NaN.
import { add, div, mul } from '../ops/binary.js';
import { matmul } from '../ops/matmul.js';
import { colNorm, rowNorm } from '../ops/norm.js';
import { contiguous, reshape } from '../ops/view.js';
import { formatShape } from '../tensor/shape.js';
import { scope, type Tensor } from '../tensor/tensor.js';

/** 'dxk': the docs' W ∈ R^{d×k}, one magnitude per column. 'linear': a Linear weight [out, in], one magnitude per row. */
export type DoraLayout = 'dxk' | 'linear';

export const DORA_LAYOUTS: readonly DoraLayout[] = ['dxk', 'linear'];

/** Invalid input to the decomposition (a zero column, mismatched shapes); the message says which. */
export class DoraError extends Error {
  constructor(message: string, readonly index?: number) {
    super(message);
    this.name = 'DoraError';
  }
}

export interface Decomposition {
  /** ‖W‖ per column ('dxk', [k]) or per row ('linear', [out]). */
  readonly magnitude: Tensor;
  /** V̂ = W/‖W‖_c, the shape of W, unit columns ('dxk') or unit rows ('linear'). */
  readonly direction: Tensor;
}

/** What one magnitude entry covers, for messages. */
function vectorName(layout: DoraLayout): string {
  return layout === 'dxk' ? 'column' : 'row';
}

function checkMatrix(op: string, w: Tensor, what: string): void {
  w.assertAlive(op);
  if (w.rank !== 2) throw new DoraError(`${op}: ${what} must be a matrix, got shape ${formatShape(w.shape)}`);
  if (w.size === 0) throw new DoraError(`${op}: ${what} ${formatShape(w.shape)} is empty`);
}

/** Number of magnitude entries for W under a layout. */
function vectorCount(w: Tensor, layout: DoraLayout): number {
  return layout === 'dxk' ? w.shape[1] : w.shape[0];
}

/**
 * The L2 norm of each column ('dxk') or row ('linear'), as a [n] tensor, after checking
 * on the host that every one is finite and non-zero.
 */
function vectorNorms(op: string, w: Tensor, layout: DoraLayout, what: string): Tensor {
  const n = vectorCount(w, layout);
  const norms = reshape(layout === 'dxk' ? colNorm(w) : rowNorm(w), [n]);
  const host = contiguous(norms).toArray();
  for (let j = 0; j < n; j++) {
    const v = host[j];
    if (v > 0 && Number.isFinite(v)) continue;
    const which = `${vectorName(layout)} ${j} (0-based) of ${what} ${formatShape(w.shape)}`;
    throw new DoraError(
      v === 0
        ? `${op}: ${which} has norm 0, so it has no direction`
        : `${op}: ${which} has norm ${v} (it holds NaN or Inf, or values whose squares overflow f32)`,
      j,
    );
  }
  return norms;
}

/** Reshapes a per-vector [n] tensor so it broadcasts against W: [1, k] ('dxk') or [out, 1] ('linear'). */
function alongVectors(v: Tensor, layout: DoraLayout): Tensor {
  return reshape(v, layout === 'dxk' ? [1, v.size] : [v.size, 1]);
}

/** Splits W into DoRA's magnitude vector and unit-norm direction matrix. */
export function decompose(W: Tensor, layout: DoraLayout): Decomposition {
  checkMatrix('decompose', W, 'W');
  return scope(() => {
    const magnitude = vectorNorms('decompose', W, layout, 'W');
    const direction = div(W, alongVectors(magnitude, layout));
    return { magnitude, direction };
  });
}

export interface RecomposeArgs {
  /** m: k entries ('dxk') or out_features entries ('linear'). */
  readonly magnitude: Tensor;
  /**
   * V in the docs' formula, the matrix the update is added to: the frozen base weight W0
   * (what PEFT adds ΔW to). `direction` is accepted as another name for it: passing the
   * unit-norm V̂ from decompose() gives the same W' only when B·A = 0, because the
   * update is added before normalising.
   */
  readonly weight?: Tensor;
  readonly direction?: Tensor;
  /** The docs' A [r, k] / PEFT's lora_A [r, in]. Omit both A and B for ΔV = 0. */
  readonly loraA?: Tensor;
  /** The docs' B [d, r] / PEFT's lora_B [out, r]. */
  readonly loraB?: Tensor;
  /** s: lora_alpha / r (or / sqrt(r) with rsLoRA). Default 1, as in the docs. */
  readonly scale?: number;
  readonly layout: DoraLayout;
}

/** W' = m · (V + s·B·A)/‖V + s·B·A‖_c, normalised per column ('dxk') or per output row ('linear'). */
export function recompose(args: RecomposeArgs): Tensor {
  const { magnitude, loraA, loraB, layout } = args;
  const scale = args.scale ?? 1;
  if (args.weight !== undefined && args.direction !== undefined) throw new DoraError('recompose: pass weight or direction, not both');
  const V = args.weight ?? args.direction;
  if (V === undefined) throw new DoraError('recompose: weight (or direction) is required');
  const vName = args.weight !== undefined ? 'weight' : 'direction';
  checkMatrix('recompose', V, vName);
  if (!Number.isFinite(scale)) throw new DoraError(`recompose: scale must be a finite number, got ${scale}`);
  const n = vectorCount(V, layout);
  magnitude.assertAlive('recompose');
  if (magnitude.size !== n || magnitude.rank > 2) {
    throw new DoraError(
      `recompose: magnitude has shape ${formatShape(magnitude.shape)}, but ${vName} ${formatShape(V.shape)} in layout '${layout}' needs ${n} entries (one per ${vectorName(layout)})`,
    );
  }
  if ((loraA === undefined) !== (loraB === undefined)) throw new DoraError('recompose: pass both loraA and loraB, or neither');
  const [R, C] = V.shape;
  if (loraA !== undefined && loraB !== undefined) {
    loraA.assertAlive('recompose');
    loraB.assertAlive('recompose');
    const r = loraB.rank === 2 ? loraB.shape[1] : -1;
    if (loraB.rank !== 2 || loraB.shape[0] !== R) {
      throw new DoraError(`recompose: B has shape ${formatShape(loraB.shape)}, but ${vName} ${formatShape(V.shape)} needs B of shape [${R}, r]`);
    }
    if (loraA.rank !== 2 || loraA.shape[0] !== r || loraA.shape[1] !== C) {
      throw new DoraError(`recompose: A has shape ${formatShape(loraA.shape)}, but B ${formatShape(loraB.shape)} and ${vName} ${formatShape(V.shape)} need A of shape [${r}, ${C}]`);
    }
  }
  return scope(() => {
    const updated = loraA !== undefined && loraB !== undefined && scale !== 0 ? add(V, mul(matmul(loraB, loraA), scale)) : V;
    const norms = vectorNorms('recompose', updated, layout, loraA === undefined ? vName : `${vName} + s·B·A`);
    const m = alongVectors(reshape(magnitude, [n]), layout);
    return mul(div(updated, alongVectors(norms, layout)), m);
  });
}
