// The kernels a backend implements, with their exact contracts. Ops (src/ops) validate
// inputs, allocate outputs and call these; backends (cpu, reference, cuda) implement
// them. Unless a contract says otherwise:
//   - every output is a fresh contiguous tensor that the kernel overwrites (=);
//   - every input is contiguous (ops make it so);
//   - accumulating kernels say "+=".
//
// Activation dtype T. A kernel's floating activations (inputs, outputs and their
// gradients) share one dtype T: f32, or bf16 on a backend that lists 'bf16' in
// Backend.computeDtypes (ops pick T, src/ops/util.ts computeDtype, and widen inputs to
// f32 otherwise). Arithmetic inside is f32 (or f64 where a contract says sums are), and
// each T output is rounded to T once (round to nearest even). Whatever T is, these stay
// f32: rmsnorm's dweight and rstd (its weight is f32 or bf16); rope's cos and sin; attention's lse and
// keyMask; crossEntropy's loss, lse and dloss; doraScale's g and dg; doraNorm's out;
// adamw's operands; dropoutMask's out; scatterAdd's out. A backend without bf16 compute
// (cpu) only ever gets T = f32.
import type { Tensor } from '../tensor/tensor.js';

export const BINARY_OPS = ['add', 'sub', 'mul', 'div', 'maximum', 'eq'] as const;
export type BinaryOp = (typeof BINARY_OPS)[number];

export const UNARY_OPS = ['neg', 'exp', 'log', 'sqrt', 'rsqrt', 'silu', 'sigmoid', 'abs', 'square'] as const;
export type UnaryOp = (typeof UNARY_OPS)[number];

export const REDUCE_OPS = ['sum', 'max'] as const;
export type ReduceOp = (typeof REDUCE_OPS)[number];

export interface ReduceAttrs {
  /** x is viewed as [outer, n, inner] and reduced over n into out [outer, inner]. */
  readonly outer: number;
  readonly n: number;
  readonly inner: number;
}

export interface MatmulAttrs {
  /** out[b] = alpha * op(a[b]) @ op(b[b]) (+ out[b] when accumulate). */
  readonly transA: boolean;
  readonly transB: boolean;
  readonly alpha: number;
  readonly accumulate: boolean;
}

export interface AttentionAttrs {
  /** Softmax scale, usually 1/sqrt(headDim). */
  readonly scale: number;
  /** Query t attends key s only when s <= t + (S - T) (queries are the last T of S positions). */
  readonly causal: boolean;
}

/**
 * A frozen weight W [rows, cols] in one of bitsandbytes' formats (src/quant/), as the
 * quantized kernels see it.
 */
export type QuantizedOperand = Int8Operand | Nf4Operand;

export interface Int8Operand {
  readonly format: 'int8';
  readonly rows: number;
  readonly cols: number;
  /** int8 [rows, cols]: round(W · 127 / scb[row]). */
  readonly cb: Tensor;
  /** f32 [rows]: each row's absmax; W ≈ cb · scb / 127. */
  readonly scb: Tensor;
}

export interface Nf4Operand {
  readonly format: 'nf4';
  readonly rows: number;
  readonly cols: number;
  /** Values per absmax block of the row-major flattened weight. */
  readonly blocksize: number;
  /** uint8 [ceil(rows·cols / 2)]: element 2i in the high nibble of byte i, 2i+1 in the low. */
  readonly packed: Tensor;
  /** f32 [16]: the value of each 4-bit code (bitsandbytes' quant_map). */
  readonly code: Tensor;
  /** f32 [blocks] when nested is null; uint8 [blocks] codes into nested.code otherwise. */
  readonly absmax: Tensor;
  /** Double quantization: absmax[b] = nested.code[q[b]] · nested.absmax[b / nested.blocksize] + nested.offset. */
  readonly nested: {
    readonly absmax: Tensor;
    readonly code: Tensor;
    readonly blocksize: number;
    readonly offset: number;
  } | null;
}

export interface QuantizedMatmulAttrs {
  /** true: out = a · Wᵀ (a Linear's forward); false: out = a · W (its input gradient). */
  readonly transW: boolean;
  /** Add to out instead of overwriting it. */
  readonly accumulate: boolean;
}

/** One AdamW step's scalars (torch.optim.AdamW at 1-based step t). */
export interface AdamWAttrs {
  readonly lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** 1 − β1^t. */
  readonly biasCorrection1: number;
  /** 1 − β2^t. */
  readonly biasCorrection2: number;
  /** Every gradient is multiplied by this first (gradient clipping's coefficient; 1 for none). */
  readonly gradScale: number;
}

/** One parameter's tensors for an AdamW step: all contiguous f32 of one size. */
export interface AdamWOperands {
  readonly param: Tensor;
  readonly grad: Tensor;
  readonly expAvg: Tensor;
  readonly expAvgSq: Tensor;
}

export interface Kernels {
  /**
   * out = x, element by element: any strides on both sides (x may broadcast with
   * stride 0), any dtypes (converted; floats to ints truncate and saturate). out may
   * be a strided view (concat and slice assignment write through it).
   */
  copy(x: Tensor, out: Tensor): void;
  /** Every element of out (contiguous, any dtype) = value. */
  fill(out: Tensor, value: number): void;
  /** out = a op b; a and b are views of dtype T already broadcast to out.shape (any strides); out is T. */
  binary(op: BinaryOp, a: Tensor, b: Tensor, out: Tensor): void;
  /**
   * out = op(x), elementwise, IEEE special values as libm gives them (log of a negative
   * is NaN, rsqrt(-0) = -inf). Accuracy against the exact value: exp, log, rsqrt within
   * 1.5 ulp, sigmoid 1.5, silu 2; the rest correctly rounded (in f32, before rounding to
   * T). x and out are T and may be the same tensor.
   */
  unary(op: UnaryOp, x: Tensor, out: Tensor): void;
  /** Sum or max over the middle axis of x viewed as [outer, n, inner]; x and out T; sums accumulate in f64. */
  reduce(op: ReduceOp, x: Tensor, out: Tensor, attrs: ReduceAttrs): void;
  /**
   * Softmax (or log-softmax) over the last axis. A row whose entries are all -inf (fully
   * masked) gives zeros (log-softmax: -inf) where PyTorch gives NaN, so a masked row
   * passes no gradient; a NaN or +inf in a row makes the whole row NaN. x and out are T.
   */
  softmax(x: Tensor, out: Tensor, log: boolean): void;
  /**
   * Batched GEMM: a [batch, M, K] (or [batch, K, M] with transA), b [batch, K, N] (or
   * [batch, N, K] with transB); out [batch, M, N] contiguous. a and b may be strided
   * views whose last two axes have one unit stride each; the batch stride may be 0.
   * Exactly two dtype combinations: a f32, b f32 or bf16 (widened), out f32; or a, b
   * and out all bf16 (T = bf16: products accumulated in f32, out rounded once; alpha
   * and accumulate as for f32). An op widens a bf16 a whose b is f32.
   */
  matmul(a: Tensor, b: Tensor, out: Tensor, attrs: MatmulAttrs): void;
  /**
   * Embedding lookup: table [V, D] (contiguous f32, bf16 or f16), ids int32 [N] ->
   * out [N, D] of dtype T (each row converted from the table's dtype). Ids out of range
   * throw (naming the id and its position) before anything is written.
   */
  gather(table: Tensor, ids: Tensor, out: Tensor): void;
  /** out[ids[i], :] += src[i, :] (+=): src T [N, D], ids int32 [N], out f32 [V, D]; repeated ids accumulate. */
  scatterAdd(src: Tensor, ids: Tensor, out: Tensor): void;
  /**
   * RMSNorm over the last axis: x T [N, D], weight f32 or bf16 [D] (used widened to f32);
   * out T [N, D], rstd f32 [N] = 1/sqrt(mean(x^2) + eps). x and out may be any contiguous
   * [..., D] (N rows in all).
   */
  rmsnorm(x: Tensor, weight: Tensor, out: Tensor, rstd: Tensor, eps: number): void;
  /** Backward of rmsnorm: x, dy, dx T [N, D] or any contiguous [..., D] (dx =); weight f32 or bf16; rstd and dweight f32 (dweight =). */
  rmsnormBackward(x: Tensor, weight: Tensor, rstd: Tensor, dy: Tensor, dx: Tensor, dweight: Tensor): void;
  /**
   * rmsnormBackward's dx alone, for a weight that needs no gradient: dx = that dx, or with
   * accumulate dx += it (rounded to T, then added as binary add adds: bit for bit dx into
   * a temporary and an add).
   */
  rmsnormBackwardDx(x: Tensor, weight: Tensor, rstd: Tensor, dy: Tensor, dx: Tensor, accumulate: boolean): void;
  /**
   * Rotary embedding, Hugging Face's rotate_half layout (pairs i and i + D/2):
   * x T [B, T, H, D]; cos, sin f32 [B or 1, T, D/2]; out T [B, T, H, D].
   * out1 = x1*cos - x2*sin, out2 = x2*cos + x1*sin; inverse flips the sign of sin
   * (the backward).
   */
  rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor, inverse: boolean): void;
  /**
   * Scaled dot-product attention with grouped-query heads: q [B, Hq, T, D],
   * k, v [B, Hkv, S, D] (Hq a multiple of Hkv; query head h reads kv head
   * h / (Hq/Hkv)); keyMask null or f32 [B, S] (1 attend, 0 masked);
   * out [B, Hq, T, D]; lse f32 [B, Hq, T] = log-sum-exp of the scaled, masked scores.
   * q, k, v, out (and dout, dq, dk, dv in the backward) are T.
   * A query row with every key masked gives zeros and lse = -Infinity (and no
   * gradient in the backward). On a backend with stridedAttention, q, k, v and out
   * (and in the backward dout, dq, dk, dv) may be views with any strides over their
   * first three axes and a unit stride on the last, and out and the gradients are
   * written through their strides; lse and keyMask are contiguous.
   */
  attention(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor | null, out: Tensor, lse: Tensor, attrs: AttentionAttrs): void;
  /** Backward of attention: dq, dk, dv (=) from dout, using out and lse saved by forward. */
  attentionBackward(
    q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor | null, out: Tensor, lse: Tensor, dout: Tensor,
    dq: Tensor, dk: Tensor, dv: Tensor, attrs: AttentionAttrs,
  ): void;
  /**
   * Cross-entropy per row: logits T [N, V], targets int32 [N]; loss f32 [N] = lse - logit[target]
   * (0 where target == ignoreIndex); lse f32 [N] saved for backward. A target outside
   * [0, V) other than ignoreIndex throws, naming its row, before anything is written.
   */
  crossEntropy(logits: Tensor, targets: Tensor, loss: Tensor, lse: Tensor, ignoreIndex: number): void;
  /** dlogits T [N, V] (=) = dloss[i] * (softmax(logits[i]) - onehot(target[i])), 0 for ignored rows; dloss and lse f32. */
  crossEntropyBackward(logits: Tensor, targets: Tensor, lse: Tensor, dloss: Tensor, dlogits: Tensor, ignoreIndex: number): void;
  /**
   * Dropout scale mask: out[i] = u(seed, offset + i) >= p ? 1/(1-p) : 0, with u the
   * counter-based uniform of src/ops/dropout.ts (identical on every backend, bit for
   * bit); seed is a uint32, 0 <= offset and offset + out.size <= 2^53; out f32 contiguous.
   */
  dropoutMask(out: Tensor, p: number, seed: number, offset: number): void;
  /**
   * out = x ⊙ the mask dropoutMask(p, seed, offset) would write, without storing the
   * mask: bit for bit the product of x and that mask (then rounded to T). x, out T
   * contiguous, one size.
   */
  dropout(x: Tensor, out: Tensor, p: number, seed: number, offset: number): void;
  /**
   * out += x ⊙ that mask: the product rounded to T as dropout writes it, then added as
   * binary add adds (bit for bit dropout into a temporary, then add). x, out T contiguous.
   */
  dropoutAdd(x: Tensor, out: Tensor, p: number, seed: number, offset: number): void;
  /**
   * out (+)= a · op(W) with W quantized and decoded on the fly (no f32 copy of W):
   * a [M, K], out [M, N] contiguous, both f32 or both bf16 (T); transW: K = cols, N =
   * rows; else K = rows, N = cols.
   */
  quantizedMatmul(a: Tensor, w: QuantizedOperand, out: Tensor, attrs: QuantizedMatmulAttrs): void;
  /** out f32 [rows, cols] = the dequantized W. */
  dequantize(w: QuantizedOperand, out: Tensor): void;
  /**
   * bitsandbytes' int8 row quantization: w [rows, cols] (f32, bf16 or f16), each value
   * first rounded to f16; scb f32 [rows] = row absmax; cb int8 = round-half-even(w · (127 / scb)).
   */
  quantizeInt8(w: Tensor, cb: Tensor, scb: Tensor): void;
  /**
   * bitsandbytes' blockwise quantization of x (any shape, f32, bf16 or f16, flattened)
   * against a sorted code table (f32, 2..256 entries): absmax f32 [ceil(n / blocksize)];
   * q uint8 [n], or [ceil(n / 2)] two indices per byte (high nibble first) when pack4.
   */
  quantizeBlockwise(x: Tensor, code: Tensor, q: Tensor, absmax: Tensor, blocksize: number, pack4: boolean): void;
  /**
   * One AdamW step over several parameters, in place (param, expAvg, expAvgSq =; grad
   * read): g = grad·gradScale; p ← p·(1 − lr·wd); m ← m + (1 − β1)(g − m);
   * v ← β2·v + (1 − β2)·g²; p ← p − (lr / bc1)·m / (√v / √bc2 + eps). Scalars may be
   * rounded to f32 before use, as torch applies Python scalars to f32 tensors.
   */
  adamw(operands: readonly AdamWOperands[], attrs: AdamWAttrs): void;
  /**
   * out[i] = Σ xs[i]² for several contiguous f32 tensors at once (out f32 [xs.length], =):
   * each square rounded to f32 and summed in f64 as reduce sums one row, so each entry
   * is what unary square then reduce sum give.
   */
  sumSquares(xs: readonly Tensor[], out: Tensor): void;
  /** out = silu(gate) ⊙ up (Llama's gated MLP activation); gate, up, out T of one shape. */
  siluMul(gate: Tensor, up: Tensor, out: Tensor): void;
  /**
   * Backward of siluMul (both =, all tensors T): with s = sigmoid(gate), dup = dout ⊙ silu(gate) and
   * dgate = (dout ⊙ up) ⊙ s ⊙ (1 + gate ⊙ (1 − s)).
   */
  siluMulBackward(gate: Tensor, up: Tensor, dout: Tensor, dgate: Tensor, dup: Tensor): void;
  /** DoRA's output scaling: out = (base + s·lora) ⊙ g; base, lora, out T [rows, cols], g f32 [cols]. */
  doraScale(base: Tensor, lora: Tensor, g: Tensor, out: Tensor, s: number): void;
  /**
   * Backward of doraScale (all =): dbase = dout ⊙ g, dlora = s·dbase (dout, dbase, dlora
   * T), and dg f32 [cols] = Σ over rows of dout ⊙ (base + s·lora), summed in f64.
   */
  doraScaleBackward(base: Tensor, lora: Tensor, g: Tensor, dout: Tensor, dbase: Tensor, dlora: Tensor, dg: Tensor, s: number): void;
  /**
   * DoRA's weight norm in the direct form: out[i] = ‖W_i + s·(B·A)_i‖₂ with w [rows, cols]
   * f32 or bf16, a f32 [r, cols], b f32 [rows, r], out f32 [rows], all contiguous. No
   * low-rank identity (so no cancellation) and no host read; sums in f32 or better with a
   * fixed per-row accumulation order (independent of the thread count).
   */
  doraNorm(w: Tensor, a: Tensor, b: Tensor, out: Tensor, s: number): void;
  /**
   * doraNorm over a quantized W read as stored (no dense copy): out[i] = ‖W_i + s·(B·A)_i‖₂
   * with W_i the values dequantize gives, a f32 [r, cols], b f32 [rows, r], out f32
   * [rows]; sums as doraNorm's.
   */
  doraNormQuantized(w: QuantizedOperand, a: Tensor, b: Tensor, out: Tensor, s: number): void;
}
