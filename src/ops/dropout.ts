// Dropout (Srivastava et al. 2014, inverted form as in torch.nn.functional.dropout):
// each element is kept with probability 1 - p and scaled by 1/(1 - p), so the
// expectation is unchanged and evaluation needs no rescaling. Training only: callers
// skip it in eval mode.
//
// The mask is drawn from a counter-based generator: element i of a call uses
// u(seed, offset + i), a pure function of two integers. Every backend computes the
// same u (native/cpu/kernels/dropout.cc implements it bit for bit), so a mask does not
// depend on the device, the thread count or the order of work, and a run resumes
// from a checkpoint with the same masks given (seed, offset).
import { kernel } from '../backend/backend.js';
import { isGradEnabled, noGrad, record } from '../autograd/tape.js';
import { sameShape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { linear, linearGrads } from './matmul.js';
import { computeDtype, gradDtype, withContiguousAs, withF32Contiguous } from './util.js';

/** A 32-bit integer finaliser with low bias (Wellons' "lowbias32" constants); a bijection. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

const TWO_POW_32 = 4294967296;

/**
 * The counter-based uniform in [0, 1) with 24 random bits: u(seed, i) for a 32-bit
 * unsigned seed and a counter 0 <= i < 2^53. The counter's high word enters the keys,
 * its low word the data; the second round is keyed separately, so two seeds never
 * give shifted copies of one sequence.
 */
export function dropoutUniform(seed: number, i: number): number {
  const lo = i >>> 0;
  const hi = Math.floor(i / TWO_POW_32) >>> 0;
  const k1 = mix32((mix32((seed ^ 0x9e3779b9) >>> 0) + hi) >>> 0);
  const k2 = mix32((k1 ^ 0x85ebca6b) >>> 0);
  const h = mix32((mix32((lo + k1) >>> 0) ^ k2) >>> 0);
  return (h >>> 8) / 16777216;
}

/** Where a dropout call draws its mask from. */
export interface DropoutOptions {
  /** 32-bit unsigned seed. */
  seed: number;
  /** Counter of the first element; successive calls must not overlap. */
  offset: number;
}

export interface DropoutState {
  seed: number;
  offset: number;
}

/**
 * A seed and a running counter: each call takes the next `n` counters, so successive
 * dropout calls draw fresh masks. state() and the constructor checkpoint and restore it.
 */
export class DropoutGenerator {
  private _offset: number;
  readonly seed: number;

  constructor(seed: number, offset = 0) {
    checkSeed('DropoutGenerator', seed);
    checkOffset('DropoutGenerator', offset, 0);
    this.seed = seed;
    this._offset = offset;
  }

  get offset(): number {
    return this._offset;
  }

  /** Reserves n counters and returns where they start. */
  take(n: number): DropoutOptions {
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`DropoutGenerator.take: n must be a non-negative integer, got ${n}`);
    const at = { seed: this.seed, offset: this._offset };
    checkOffset('DropoutGenerator.take', at.offset, n);
    this._offset += n;
    return at;
  }

  /** Moves the stream back (or on) to `offset`: a recomputed forward replays the masks it drew. */
  seek(offset: number): void {
    checkOffset('DropoutGenerator.seek', offset, 0);
    this._offset = offset;
  }

  state(): DropoutState {
    return { seed: this.seed, offset: this._offset };
  }

  static fromState(state: DropoutState): DropoutGenerator {
    return new DropoutGenerator(state.seed, state.offset);
  }
}

function checkSeed(op: string, seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed >= TWO_POW_32) throw new Error(`${op}: seed must be an integer in [0, 2^32), got ${seed}`);
}

function checkOffset(op: string, offset: number, n: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(offset + n)) {
    throw new Error(`${op}: offset must be an integer in [0, 2^53 - ${n}], got ${offset}`);
  }
}

/** The f32 scale mask of a dropout call: 1/(1 - p) where kept, 0 where dropped. */
export function dropoutMask(shape: readonly number[], p: number, at: DropoutOptions, like: Tensor): Tensor {
  const out = empty(shape, 'f32', like.backend);
  if (out.size > 0) kernel(like.backend, 'dropoutMask')(out, p, at.seed, at.offset);
  return out;
}

/**
 * Zeroes each element of x with probability p and scales the rest by 1/(1 - p).
 * `from` is a position in the generator's stream ({ seed, offset }) or a
 * DropoutGenerator, which then advances by x.size. p = 0 returns x itself.
 */
export function dropout(x: Tensor, p: number, from: DropoutOptions | DropoutGenerator): Tensor {
  x.assertAlive('dropout');
  if (!(p >= 0 && p < 1)) throw new Error(`dropout: p must be in [0, 1), got ${p}`);
  if (p === 0) return x;
  const at = from instanceof DropoutGenerator ? from.take(x.size) : { seed: from.seed, offset: from.offset };
  checkSeed('dropout', at.seed);
  checkOffset('dropout', at.offset, x.size);
  const out = applyMask(x, p, at);
  // NOTE: backward redraws the mask from (seed, offset) instead of saving it: the
  // generator is counter-based, so it is the same mask bit for bit, and no
  // activation-sized tensor is held between forward and backward.
  return record(out, 'dropout', [x], (g, into) => [applyMask(g, p, at, into?.[0] ?? null)], []);
}

let keepDropped = 0;

/**
 * Runs fn with dropoutLinear saving its dropped input for backward instead of redrawing
 * the mask there: for a forward whose backward follows at once (gradient checkpointing's
 * recomputation of one layer), where holding the dropped copies costs little and the
 * redraw is a kernel call per product. Values and gradients are the same bit for bit.
 */
export function keepingDroppedInputs<T>(fn: () => T): T {
  keepDropped++;
  try {
    return fn();
  } finally {
    keepDropped--;
  }
}

/**
 * linear(dropout(x, p, from), weight) with x [..., in] (rank >= 2) and weight [out, in],
 * the same values and gradients bit for bit, but its record saves x instead of
 * dropout(x): backward redraws the mask. Adapters that share an input (a layer's q, k
 * and v, or gate and up) then keep that input once rather than one dropped copy each.
 */
export function dropoutLinear(x: Tensor, weight: Tensor, p: number, from: DropoutOptions | DropoutGenerator): Tensor {
  x.assertAlive('dropoutLinear');
  if (!(p >= 0 && p < 1)) throw new Error(`dropoutLinear: p must be in [0, 1), got ${p}`);
  if (p === 0) return linear(x, weight);
  const at = from instanceof DropoutGenerator ? from.take(x.size) : { seed: from.seed, offset: from.offset };
  if (!isGradEnabled() || x.rank < 2 || !(x.requiresGrad || weight.requiresGrad)) return linear(dropout(x, p, at), weight);
  checkSeed('dropoutLinear', at.seed);
  checkOffset('dropoutLinear', at.offset, x.size);
  const xd = applyMask(x, p, at);
  const y = noGrad(() => linear(xd, weight));
  // The dropped input is kept for dW when asked to (keepingDroppedInputs), else redrawn.
  const kept = keepDropped > 0 && weight.requiresGrad ? xd : null;
  if (kept === null) xd.dispose();
  return record(
    y,
    'dropoutLinear',
    [x, weight],
    (g, into) => {
      const wantX = x.requiresGrad, wantW = weight.requiresGrad;
      // dW reads dropout(x) (kept or redrawn); dx needs only x's shape.
      const redrawn = wantW && kept === null ? applyMask(x, p, at) : null;
      const [dxd, dw] = linearGrads(g, kept ?? redrawn ?? x, weight, wantX, wantW);
      redrawn?.dispose();
      if (dxd === null) return [null, dw];
      // As the tape would hand it to dropout's backward: in dropout(x)'s gradient dtype.
      let gd = dxd;
      if (dxd.dtype !== gradDtype(x)) {
        gd = empty(dxd.shape, gradDtype(x), x.backend);
        kernel(x.backend, 'copy')(dxd, gd);
        dxd.dispose();
      }
      const dx = applyMask(gd, p, at, into?.[0] ?? null);
      gd.dispose();
      return [dx, dw];
    },
    // dW reads x (or its kept dropped copy), dx reads the weight.
    [...(weight.requiresGrad ? [kept ?? x] : []), ...(x.requiresGrad ? [weight] : [])],
  );
}

/**
 * x ⊙ mask in x's compute dtype (bf16 stays bf16 where the backend computes in bf16):
 * one fused pass where the backend has it, else the f32 mask and a product. With
 * `into` (a gradient pending in the tape, contiguous, in that dtype and shape) and a
 * backend with dropoutAdd, the product is added into it instead (returned): the same
 * values as the product followed by the tape's add.
 */
function applyMask(x: Tensor, p: number, at: DropoutOptions, into: Tensor | null = null): Tensor {
  const dtype = computeDtype(x.backend, x);
  const add = x.backend.kernels.dropoutAdd;
  if (into !== null && add !== undefined && into.dtype === dtype && sameShape(into.shape, x.shape) && into.isContiguous()) {
    if (into.size > 0) withContiguousAs(dtype, [x], (xc) => add(xc, into, p, at.seed, at.offset));
    return into;
  }
  const out = empty(x.shape, dtype, x.backend);
  const fused = x.backend.kernels.dropout;
  if (fused !== undefined) {
    if (out.size > 0) withContiguousAs(dtype, [x], (xc) => fused(xc, out, p, at.seed, at.offset));
    return out;
  }
  const mask = dropoutMask(x.shape, p, at, x);
  // The product is f32 (the mask is), rounded once into a bf16 out.
  const wide = dtype === 'f32' ? out : empty(x.shape, 'f32', x.backend);
  try {
    withF32Contiguous([x], (xc) => kernel(x.backend, 'binary')('mul', xc, mask, wide));
    if (wide !== out) kernel(x.backend, 'copy')(wide, out);
  } finally {
    mask.dispose();
    if (wide !== out) wide.dispose();
  }
  return out;
}
