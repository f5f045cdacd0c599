// DoRA as a LoRA variant (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank
// Adaptation"; PEFT's DoraLinearVariant / DoraLinearLayer). For a Linear with weight W
// [out, in] and bias b:
//
//   n = ‖W + s·B·A‖ per output row, a constant in backward (§4.3; PEFT detaches it too)
//   g = m / n,  m = lora_magnitude_vector [out], trained directly
//   y = b + g ⊙ (W·x + s·B·A·x̃)                       finlora (default)
//   y = W·x + b + (g − 1) ⊙ W·x̃ + g ⊙ s·B·A·x̃         PEFT's training forward with dropout
//
// with x̃ = dropout(x) while training (x otherwise, where both lines are the same
// function). At initialisation m = ‖W + s·B·A‖ = ‖W‖ (B = 0), so g = 1 exactly.
//
// On a backend with the doraNorm kernel (src/ops/dora.ts) the norm is one kernel in the
// direct form, W_i + s·B_i·A formed and squared row by row in registers: no cancellation
// to guard against and nothing read back to the host, which on a GPU would stall the
// stream once per DoRA layer and step. Over a quantized base the frozen weight's own
// doraNorm (src/quant/ops.ts quantizedDoraNorm) reads W from its codes where it can.
// Elsewhere it is computed without materialising W + s·B·A (out × in values per layer
// and step): per row,
//   ‖W + s·B·A‖² = ‖W‖² + 2s·rowsum((W·Aᵀ) ⊙ B) + s²·rowsum((B·A·Aᵀ) ⊙ B),
// with ‖W‖² computed once for the frozen W (f64 sums in the reduce kernel; the row sums
// below accumulate in f64 too). The products W·Aᵀ and B·A·Aᵀ run in f32, so each term
// carries an error of order ε·S per row, S = ‖W_i‖² + s²‖B_i·A‖² (measured: n within
// 1e-7 relative of an f64 truth for in_features up to 14336, as close as the direct
// form). By Cauchy–Schwarz n² lies in [0, 2S]; when the update cancels the row
// (s·B_i·A ≈ −W_i) the identity subtracts nearly equal numbers and its relative error
// grows as S / n². Detection: a row whose identity n² is below NORM_FALLBACK_RATIO · S
// (the cross term cancels at least a quarter of S) is recomputed in the direct form,
// W_i + s·B_i·A summed in f64 — the form PEFT computes — so the identity is only used
// where its relative error in n² stays within about ε·S/n² ≤ 2ε. Such rows need a strongly
// anti-aligned update as large as W itself; trained adapters have ‖s·B·A‖ ≪ ‖W‖, so the
// fallback almost never runs. The check costs one host read of an [out] vector per
// layer and forward (free on the host, a stall on a device: hence the kernel above).
//
// Merge: W' = (m / ‖W + s·B·A‖)[:, None] ⊙ (W + s·B·A), the norm in the direct form as
// PEFT's merge computes it and kept for unmerge (W = W' / (m / n) − s·B·A).
import { recomputable } from '../../autograd/recompute.js';
import { noGrad } from '../../autograd/tape.js';
import { add, div, maximum, mul, sub } from '../../ops/binary.js';
import { tensor } from '../../ops/creation.js';
import { indexSelect } from '../../ops/concat.js';
import { doraNorm, doraScale, doraScaleDtype, hasDoraNormKernel } from '../../ops/dora.js';
import { matmul } from '../../ops/matmul.js';
import { rowNorm } from '../../ops/norm.js';
import { sum } from '../../ops/reduce.js';
import { sqrt, square } from '../../ops/unary.js';
import { cast, clone, contiguous, reshape, transpose } from '../../ops/view.js';
import { keep, scope, type Tensor } from '../../tensor/tensor.js';
import { AdapterWeight, type FrozenWeight, type LoraLayer, type LoraVariant } from './layer.js';

/** Rows whose identity n² is below this fraction of ‖W‖² + s²‖B·A‖² take the direct form. */
export const NORM_FALLBACK_RATIO = 0.5;

/** ‖W‖² per row, f32 [out] (sums of squares accumulate in f64). */
export function weightNormSquared(frozen: FrozenWeight): Tensor {
  // A bf16 W would be squared in bf16 on a backend that computes in bf16.
  return noGrad(() => scope(() => frozen.withDense((w) => sum(square(cast(w, 'f32')), -1))));
}

export interface LowRankNorm {
  /** ‖W + s·B·A‖² per row by the identity, f32 [out]. */
  readonly n2: Tensor;
  /** ‖W‖² + s²‖B·A‖² per row: the size the terms of n2 have, f32 [out]. */
  readonly scale: Tensor;
}

/** The low-rank identity for ‖W + s·B·A‖² per row, without W + s·B·A (no gradient). */
export function lowRankNormSquared(frozen: FrozenWeight, wNormSq: Tensor, A: Tensor, B: Tensor, s: number): LowRankNorm {
  return noGrad(() =>
    scope(() => {
      // (W·Aᵀ)ᵀ = A·Wᵀ [r, out] through the frozen weight's own product (W may be bf16 or quantized).
      const cross = sum(mul(frozen.apply(A), transpose(B)), 0);
      // rowsum((B·A·Aᵀ) ⊙ B) = ‖B_i·A‖²: an [r, r] Gram matrix instead of B·A.
      const q = sum(mul(matmul(B, matmul(A, A, { transB: true })), B), -1);
      const s2q = mul(q, s * s);
      return { n2: add(add(wNormSq, mul(cross, 2 * s)), s2q), scale: add(wNormSq, s2q) };
    }),
  );
}

/** ‖W_i + s·B_i·A‖ in the direct form for the given rows (all rows when omitted), f32 [rows]. */
export function directRowNorms(frozen: FrozenWeight, A: Tensor, B: Tensor, s: number, rows?: readonly number[]): Tensor {
  return noGrad(() =>
    scope(() =>
      frozen.withDense((w) => {
        const wr = rows === undefined ? w : indexSelect(w, 0, rows);
        const br = rows === undefined ? B : indexSelect(B, 0, rows);
        return rowNorm(add(cast(wr, 'f32'), mul(matmul(br, A), s)));
      }),
    ),
  );
}

export interface DoraNorm {
  /** n = ‖W + s·B·A‖ per row, f32 [out], no gradient. */
  readonly norm: Tensor;
  /** Rows that took the direct form. */
  readonly fallbackRows: readonly number[];
}

/** DoRA's weight norm by the low-rank identity, with the direct form for rows where it cancels. */
export function doraWeightNorm(frozen: FrozenWeight, wNormSq: Tensor, A: Tensor, B: Tensor, s: number): DoraNorm {
  return noGrad(() =>
    scope(() => {
      const { n2, scale } = lowRankNormSquared(frozen, wNormSq, A, B, s);
      const margin = contiguous(sub(n2, mul(scale, NORM_FALLBACK_RATIO))).toArray();
      const rows: number[] = [];
      // NOTE: !(v > 0) also takes NaN rows and rows where W and B·A are both zero.
      for (let i = 0; i < margin.length; i++) if (!(margin[i] > 0)) rows.push(i);
      const norm = sqrt(maximum(n2, 0));
      if (rows.length === 0) return { norm, fallbackRows: rows };
      const host = Float32Array.from(norm.toArray());
      const direct = directRowNorms(frozen, A, B, s, rows).toArray();
      rows.forEach((row, j) => (host[row] = direct[j]));
      return { norm: tensor(host, [host.length], { device: norm.backend }), fallbackRows: rows };
    }),
  );
}

/**
 * y = g ⊙ (base + s·lora) + (1 − g) ⊙ b with g = m / n, i.e. b + g ⊙ (W·x + s·B·A·x̃)
 * for base = W·x + b and lora = B·A·x̃. n must carry no gradient.
 */
export function doraCombine(base: Tensor, lora: Tensor, m: Tensor, n: Tensor, s: number, bias: Tensor | null): Tensor {
  const g = div(m, n);
  const y = doraScale(base, lora, g, s);
  // g is f32, so the bias term is rounded to y's compute dtype before the add (bf16 stays bf16).
  return bias === null ? y : add(y, cast(mul(bias, sub(1, g)), y.dtype));
}

/** PEFT's training forward with dropout: y = base + (g − 1) ⊙ wx̃ + g ⊙ s·lora, wx̃ = W·x̃ (no bias). */
export function doraCombinePeft(base: Tensor, wxd: Tensor, lora: Tensor, m: Tensor, n: Tensor, s: number): Tensor {
  const g = div(m, n);
  // The f32 factors promote the terms to f32; the sum is rounded once to base's compute dtype.
  return cast(add(add(base, mul(wxd, sub(g, 1))), mul(mul(lora, s), g)), doraScaleDtype(base));
}

export class DoraVariant implements LoraVariant {
  readonly lora_magnitude_vector: AdapterWeight;
  readonly modules: ReadonlyMap<string, AdapterWeight>;
  private wNormSq: Tensor | null = null;
  /** n while in eval mode, where A, B and m do not change between forwards. */
  private evalNorm: Tensor | null = null;
  /** The norm a merge used, for unmerge (PEFT caches it the same way). */
  private mergedNorm: Tensor | null = null;
  /** Rows that took the direct form in the last norm computed (for tests and diagnostics). */
  lastFallbackRows: readonly number[] = [];

  constructor(layer: LoraLayer) {
    const m = noGrad(() => scope(() => clone(this.computeNorm(layer))));
    this.lora_magnitude_vector = new AdapterWeight(m, `${layer.name}.lora_magnitude_vector.weight`);
    this.modules = new Map([['lora_magnitude_vector', this.lora_magnitude_vector]]);
  }

  /** n = ‖W + s·B·A‖ per row (detached). */
  weightNorm(layer: LoraLayer): Tensor {
    if (layer.training) {
      this.dropEvalNorm();
      // A checkpointed layer's recomputation takes the norm its forward computed (same weights, no gradient).
      return recomputable(this, () => this.computeNorm(layer));
    }
    if (this.evalNorm === null) this.evalNorm = keep(this.computeNorm(layer));
    return this.evalNorm;
  }

  private computeNorm(layer: LoraLayer): Tensor {
    const A = layer.lora_A.weight, B = layer.lora_B.weight;
    if (hasDoraNormKernel(A.backend)) {
      this.lastFallbackRows = [];
      // A quantized base computes the norm from its codes (no f32 copy of W per forward).
      const fromHeld = layer.frozen.doraNorm;
      if (fromHeld !== undefined) return noGrad(() => fromHeld(A, B, layer.scaling));
      return noGrad(() => layer.frozen.withDense((w) => doraNorm(w, A, B, layer.scaling)));
    }
    if (this.wNormSq === null) this.wNormSq = keep(weightNormSquared(layer.frozen));
    const { norm, fallbackRows } = doraWeightNorm(layer.frozen, this.wNormSq, layer.lora_A.weight, layer.lora_B.weight, layer.scaling);
    this.lastFallbackRows = fallbackRows;
    return norm;
  }

  forward(layer: LoraLayer, x: Tensor, base: Tensor): Tensor {
    const n = this.weightNorm(layer);
    const m = this.lora_magnitude_vector.weight;
    if (layer.dropoutSemantics === 'peft') {
      const xd = layer.dropoutInput(x);
      if (xd !== x) return doraCombinePeft(base, layer.frozen.apply(xd), layer.loraBranch(xd), m, n, layer.scaling);
      return doraCombine(base, layer.loraBranch(xd), m, n, layer.scaling, layer.target.bias);
    }
    return doraCombine(base, layer.droppedLoraBranch(x), m, n, layer.scaling, layer.target.bias);
  }

  merge(layer: LoraLayer, w: Tensor): Tensor {
    const updated = add(w, layer.deltaWeight());
    const n = rowNorm(updated);
    this.mergedNorm?.dispose();
    this.mergedNorm = keep(clone(n));
    return mul(updated, reshape(div(this.lora_magnitude_vector.weight, n), [n.size, 1]));
  }

  unmerge(layer: LoraLayer, merged: Tensor): Tensor {
    const n = this.mergedNorm;
    if (n === null) throw new Error(`${layer.name}: no weight norm from a merge to unmerge with`);
    const factor = reshape(div(this.lora_magnitude_vector.weight, n), [n.size, 1]);
    const w = sub(div(merged, factor), layer.deltaWeight());
    n.dispose();
    this.mergedNorm = null;
    return w;
  }

  private dropEvalNorm(): void {
    this.evalNorm?.dispose();
    this.evalNorm = null;
  }

  invalidate(): void {
    this.dropEvalNorm();
    this.wNormSq?.dispose();
    this.wNormSq = null;
  }
}

/** The variant factory LoraModel uses when use_dora is set. */
export function doraVariant(layer: LoraLayer): LoraVariant {
  return new DoraVariant(layer);
}
