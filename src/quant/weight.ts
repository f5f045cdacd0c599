// QuantizedWeight: a frozen Linear weight W [out_features, in_features] held in one of
// bitsandbytes' formats (int8 rows, or NF4 blocks with optional double quantization;
// src/quant/int8.ts and nf4.ts give the definitions), as backend tensors that the
// quantized kernels read directly. Made by quantizing a float weight at load time
// (quantizeWeight), from host arrays (tests, checkpoints: fromHost) or by the
// checkpoint reader (src/quant/checkpoint.ts).
//
// A quantized weight is long-lived like a parameter: its tensors are kept out of every
// scope on creation, and dispose() frees them.
import type { Backend } from '../backend/backend.js';
import { kernel } from '../backend/backend.js';
import type { Int8Operand, Nf4Operand } from '../backend/kernels.js';
import { resolveBackend } from '../ops/creation.js';
import { contiguous } from '../ops/view.js';
import { type DType, DTYPE_BYTES, encode, isFloat } from '../tensor/dtype.js';
import { formatShape } from '../tensor/shape.js';
import { empty, keep, type Tensor } from '../tensor/tensor.js';
import type { Int8Host } from './int8.js';
import { centredAbsmax, checkNf4Options, dynamicMap, NESTED_BLOCKSIZE, NF4_CODE, type Nf4Host, type Nf4Options, nestedOffset } from './nf4.js';

export type QuantFormat = 'int8' | 'nf4';

/** FinLoRA's quant_bits: 8 is bitsandbytes' int8, 4 its NF4 (bnb_4bit_quant_type 'nf4'). */
export function formatForBits(bits: number): QuantFormat {
  if (bits === 8) return 'int8';
  if (bits === 4) return 'nf4';
  throw new Error(`quant_bits must be 8 or 4, got ${bits}`);
}

/** A tensor holding raw little-endian bytes of a dtype. */
export function tensorFromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType, backend: Backend): Tensor {
  const t = empty(shape, dtype, backend);
  if (bytes.length !== t.size * DTYPE_BYTES[dtype]) {
    t.dispose();
    throw new Error(`tensorFromBytes: ${bytes.length} bytes do not fill ${formatShape(shape)} of ${dtype}`);
  }
  if (bytes.length > 0) backend.write(t.storage.buffer, 0, bytes, dtype);
  return t;
}

function hostTensor(values: ArrayLike<number>, shape: readonly number[], dtype: DType, backend: Backend): Tensor {
  return tensorFromBytes(encode(dtype, values), shape, dtype, backend);
}

function bytesOf(ts: readonly Tensor[]): number {
  return ts.reduce((s, t) => s + t.size * DTYPE_BYTES[t.dtype], 0);
}

function expect(cond: boolean, msg: () => string): void {
  if (!cond) throw new Error(msg());
}

function describe(t: Tensor): string {
  return `${t.dtype} ${formatShape(t.shape)}`;
}

abstract class QuantizedBase {
  constructor(
    readonly rows: number,
    readonly cols: number,
    /** The dtype the weight had before quantization (bitsandbytes' quant_state.dtype); merges write it back. */
    readonly dtype: DType,
  ) {
    expect(Number.isSafeInteger(rows) && Number.isSafeInteger(cols) && rows >= 0 && cols >= 0, () => `quantized weight: bad shape [${rows}, ${cols}]`);
    expect(isFloat(dtype), () => `quantized weight: original dtype must be a float type, got ${dtype}`);
  }

  get shape(): [number, number] {
    return [this.rows, this.cols];
  }

  /** Values of W. */
  get parameters(): number {
    return this.rows * this.cols;
  }

  /** Bytes of every tensor this weight holds (codes, scales, code tables). */
  get bytes(): number {
    return bytesOf(this.tensors());
  }

  /** Storage per value of W, scales and tables included. */
  get bytesPerParameter(): number {
    return this.bytes / Math.max(1, this.parameters);
  }

  get backend(): Backend {
    return this.tensors()[0].backend;
  }

  abstract tensors(): Tensor[];

  dispose(): void {
    for (const t of this.tensors()) t.dispose();
  }

  protected keepAll(): void {
    for (const t of this.tensors()) keep(t);
  }
}

/** bitsandbytes' int8 weight: CB int8 [rows, cols] and SCB f32 [rows]. */
export class Int8Weight extends QuantizedBase implements Int8Operand {
  readonly format = 'int8' as const;

  constructor(readonly cb: Tensor, readonly scb: Tensor, dtype: DType = 'f32') {
    super(cb.shape[0] ?? 0, cb.shape[1] ?? 0, dtype);
    expect(cb.rank === 2 && cb.dtype === 'int8' && cb.isContiguous(), () => `int8 weight: CB must be contiguous int8 [out, in], got ${describe(cb)}`);
    expect(scb.rank === 1 && scb.dtype === 'f32' && scb.shape[0] === this.rows && scb.isContiguous(), () => `int8 weight: SCB must be f32 [${this.rows}], got ${describe(scb)}`);
    expect(scb.backend === cb.backend, () => 'int8 weight: CB and SCB live on different devices');
    this.keepAll();
  }

  static fromHost(h: Int8Host, opts: { device?: string | Backend; dtype?: DType } = {}): Int8Weight {
    const backend = resolveBackend(opts.device);
    return new Int8Weight(hostTensor(h.cb, [h.rows, h.cols], 'int8', backend), hostTensor(h.scb, [h.rows], 'f32', backend), opts.dtype);
  }

  tensors(): Tensor[] {
    return [this.cb, this.scb];
  }
}

/** bitsandbytes' NF4 weight: packed 4-bit codes, a 16-entry code, block absmaxes (optionally double quantized). */
export class Nf4Weight extends QuantizedBase implements Nf4Operand {
  readonly format = 'nf4' as const;
  readonly nested: Nf4Operand['nested'];

  constructor(
    rows: number,
    cols: number,
    readonly blocksize: number,
    readonly packed: Tensor,
    readonly code: Tensor,
    readonly absmax: Tensor,
    nested: Nf4Operand['nested'],
    dtype: DType = 'f32',
  ) {
    super(rows, cols, dtype);
    const n = rows * cols;
    const blocks = Math.ceil(n / blocksize);
    expect(Number.isInteger(blocksize) && blocksize > 0, () => `nf4 weight: block size ${blocksize} is not a positive integer`);
    expect(packed.dtype === 'uint8' && packed.isContiguous() && packed.size === Math.ceil(n / 2), () => `nf4 weight: packed codes must be ${Math.ceil(n / 2)} contiguous uint8 for [${rows}, ${cols}], got ${describe(packed)}`);
    expect(code.dtype === 'f32' && code.size === 16 && code.isContiguous(), () => `nf4 weight: the code must be 16 f32 values, got ${describe(code)}`);
    const absDtype = nested === null ? 'f32' : 'uint8';
    expect(absmax.dtype === absDtype && absmax.size === blocks && absmax.isContiguous(), () => `nf4 weight: absmax must be ${blocks} ${absDtype} (one per block of ${blocksize}), got ${describe(absmax)}`);
    if (nested !== null) {
      const nb = nested.blocksize;
      expect(Number.isInteger(nb) && nb > 0, () => `nf4 weight: nested block size ${nb} is not a positive integer`);
      const blocks2 = Math.ceil(blocks / nb);
      expect(nested.absmax.dtype === 'f32' && nested.absmax.size === blocks2 && nested.absmax.isContiguous(), () => `nf4 weight: nested absmax must be ${blocks2} f32 (one per ${nb} blocks), got ${describe(nested.absmax)}`);
      expect(nested.code.dtype === 'f32' && nested.code.size === 256 && nested.code.isContiguous(), () => `nf4 weight: the nested code must be 256 f32 values, got ${describe(nested.code)}`);
      expect(Number.isFinite(nested.offset), () => `nf4 weight: nested offset ${nested.offset} is not finite`);
    }
    for (const t of [code, absmax, ...(nested ? [nested.absmax, nested.code] : [])]) {
      expect(t.backend === packed.backend, () => 'nf4 weight: its tensors live on different devices');
    }
    this.nested = nested;
    this.keepAll();
  }

  static fromHost(h: Nf4Host, opts: { device?: string | Backend; dtype?: DType } = {}): Nf4Weight {
    const backend = resolveBackend(opts.device);
    expect(h.shape.length === 2, () => `nf4 weight: a Linear weight is [out, in], got [${h.shape.join(', ')}]`);
    const [rows, cols] = h.shape;
    const blocks = h.absmax.length;
    const n = h.nested;
    const nested = n === null ? null : {
      absmax: hostTensor(n.absmax, [n.absmax.length], 'f32', backend),
      code: hostTensor(n.code, [n.code.length], 'f32', backend),
      blocksize: n.blocksize,
      offset: n.offset,
    };
    return new Nf4Weight(
      rows, cols, h.blocksize,
      hostTensor(h.packed, [h.packed.length], 'uint8', backend),
      hostTensor(h.code, [h.code.length], 'f32', backend),
      hostTensor(h.absmax, [blocks], n === null ? 'f32' : 'uint8', backend),
      nested, opts.dtype,
    );
  }

  tensors(): Tensor[] {
    const n = this.nested;
    return n === null ? [this.packed, this.code, this.absmax] : [this.packed, this.code, this.absmax, n.absmax, n.code];
  }
}

export type QuantizedWeight = Int8Weight | Nf4Weight;

export function isQuantizedWeight(x: unknown): x is QuantizedWeight {
  return x instanceof Int8Weight || x instanceof Nf4Weight;
}

function checkFloatMatrix(op: string, w: Tensor): void {
  w.assertAlive(op);
  expect(w.rank === 2, () => `${op}: a Linear weight is [out, in], got ${formatShape(w.shape)}${w.name ? ` ('${w.name}')` : ''}`);
  expect(isFloat(w.dtype), () => `${op}: can quantize f32, bf16 or f16, got ${w.dtype}${w.name ? ` ('${w.name}')` : ''}`);
}

/** bitsandbytes' int8 quantization of a float weight [out, in] (Int8Params). */
export function quantizeInt8(w: Tensor): Int8Weight {
  checkFloatMatrix('quantizeInt8', w);
  const wc = contiguous(w);
  const cb = empty(w.shape, 'int8', w.backend);
  const scb = empty([w.shape[0]], 'f32', w.backend);
  try {
    if (w.size > 0) kernel(w.backend, 'quantizeInt8')(wc, cb, scb);
    else if (scb.size > 0) kernel(w.backend, 'fill')(scb, 0);
  } catch (e) {
    cb.dispose();
    scb.dispose();
    throw e;
  } finally {
    if (wc !== w) wc.dispose();
  }
  return new Int8Weight(cb, scb, w.dtype);
}

/** bitsandbytes' NF4 quantization of a float weight [out, in] (Params4bit), double quantized unless told not to. */
export function quantizeNf4(w: Tensor, opts: Nf4Options = {}): Nf4Weight {
  checkFloatMatrix('quantizeNf4', w);
  const { blocksize, doubleQuant } = checkNf4Options(opts, 'quantizeNf4');
  const backend = w.backend;
  const [rows, cols] = w.shape;
  const n = rows * cols;
  const blocks = Math.ceil(n / blocksize);
  const made: Tensor[] = [];
  const make = (t: Tensor) => (made.push(t), t);
  const wc = contiguous(w);
  try {
    const packed = make(empty([Math.ceil(n / 2)], 'uint8', backend));
    const code = make(hostTensor(NF4_CODE, [16], 'f32', backend));
    const absmax = make(empty([blocks], 'f32', backend));
    if (n > 0) kernel(backend, 'quantizeBlockwise')(wc, code, packed, absmax, blocksize, true);
    if (!doubleQuant) return new Nf4Weight(rows, cols, blocksize, packed, code, absmax, null, w.dtype);
    // Double quantization (compress_statistics): the absmaxes minus their mean, in blocks of 256 against the dynamic map.
    const read = absmax.toArray();
    const host = read instanceof Float32Array ? read : Float32Array.from(read);
    const offset = nestedOffset(host);
    const c = centredAbsmax(host, offset);
    const centred = make(tensorFromBytes(new Uint8Array(c.buffer, c.byteOffset, c.byteLength), [blocks], 'f32', backend));
    const code2 = make(hostTensor(dynamicMap(), [256], 'f32', backend));
    const qabs = make(empty([blocks], 'uint8', backend));
    const abs2 = make(empty([Math.ceil(blocks / NESTED_BLOCKSIZE)], 'f32', backend));
    if (blocks > 0) kernel(backend, 'quantizeBlockwise')(centred, code2, qabs, abs2, NESTED_BLOCKSIZE, false);
    centred.dispose();
    absmax.dispose();
    return new Nf4Weight(rows, cols, blocksize, packed, code, qabs, { absmax: abs2, code: code2, blocksize: NESTED_BLOCKSIZE, offset }, w.dtype);
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  } finally {
    if (wc !== w) wc.dispose();
  }
}

/** Quantizes a float weight [out, in] at load time into the given format. */
export function quantizeWeight(w: Tensor, format: QuantFormat, opts: Nf4Options = {}): QuantizedWeight {
  return format === 'int8' ? quantizeInt8(w) : quantizeNf4(w, opts);
}
