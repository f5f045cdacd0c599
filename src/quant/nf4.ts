// NF4 and bitsandbytes' blockwise quantization: the code tables, and plain TypeScript
// quantize / dequantize references (used by the reference backend and by tests; the
// cpu backend's kernels are native/cpu/kernels/quantize.cc and qmatmul.cc).
//
// Follows bitsandbytes' public source (bitsandbytes-foundation/bitsandbytes):
//   - the NF4 table: functional.get_4bit_type('nf4'), sixteen quantiles of N(0, 1)
//     normalised to [-1, 1] (QLoRA, Dettmers et al. 2023), index 7 is exactly 0;
//   - the 8-bit dynamic map: functional.create_dynamic_map(signed=True,
//     max_exponent_bits=7, total_bits=8): for i in 0..6, the midpoints of
//     linspace(0.1, 1, 2^i + 1) (float32) times ±10^(i-6), plus 0 and 1, sorted — 256
//     entries from -0.99296875 to 1;
//   - blockwise quantization (backends/default/ops.py, quantize_blockwise and
//     quantize_4bit): per block of the flattened tensor absmax = max |x|, scaled =
//     clamp(x * (1 / max(absmax, 1e-38)), -1, 1) in float32 (the last, partial block
//     divides by its clamped absmax and stores that), index = torch.bucketize(scaled,
//     midpoints of the code) — the nearest entry, ties to the lower one;
//   - 4-bit packing: packed = q[::2] << 4 | q[1::2], element 2i in the HIGH nibble of
//     byte i; an odd count is padded with the index of 0;
//   - double quantization (quantize_4bit with compress_statistics=True): offset =
//     absmax.mean(), then quantize_blockwise(absmax - offset, blocksize=256) with the
//     dynamic map; dequantize: absmax = code2[q] * absmax2[b / 256] (float32), + offset.
//   - NF4 uses blocks of 64 (Params4bit's default blocksize).
import { numel } from '../tensor/shape.js';

const f = Math.fround;

/** bitsandbytes' NF4 code table (get_4bit_type('nf4')), as float32. */
export const NF4_CODE: Float32Array = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);

export const NF4_BLOCKSIZE = 64;
export const NESTED_BLOCKSIZE = 256;
/** The block sizes bitsandbytes' quantize_4bit accepts. */
export const BNB_4BIT_BLOCKSIZES: readonly number[] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/** torch.linspace(start, end, steps, dtype=float32) on the CPU: the first half counts up from start, the rest down from end. */
function linspaceF32(start: number, end: number, steps: number): Float32Array {
  const s = f(start), e = f(end);
  const step = f(f(e - s) / (steps - 1));
  const half = Math.floor(steps / 2);
  return Float32Array.from({ length: steps }, (_, i) => (i < half ? f(s + f(step * i)) : f(e - f(step * (steps - i - 1)))));
}

let dynamic: Float32Array | null = null;

/** bitsandbytes' signed 8-bit dynamic map (create_dynamic_map()), 256 sorted float32 values. */
export function dynamicMap(): Float32Array {
  if (dynamic !== null) return dynamic.slice();
  const maxExponentBits = 7, nonSignBits = 7;
  const data: number[] = [];
  for (let i = 0; i < maxExponentBits; i++) {
    const items = 2 ** (i + nonSignBits - maxExponentBits) + 1;
    const b = linspaceF32(0.1, 1, items);
    const scale = f(10 ** (-(maxExponentBits - 1) + i));
    for (let k = 0; k + 1 < b.length; k++) {
      const mean = f(f(b[k] + b[k + 1]) / 2);
      data.push(f(scale * mean), f(-scale * mean));
    }
  }
  data.push(0, 1);
  data.sort((a, b) => a - b);
  dynamic = Float32Array.from(data);
  return dynamic.slice();
}

/** Midpoints between consecutive entries of a sorted code, in float32. */
function midpoints(code: Float32Array): Float32Array {
  return Float32Array.from({ length: code.length - 1 }, (_, i) => f(f(code[i] + code[i + 1]) / 2));
}

/** torch.bucketize(x, bounds, right=False): how many bounds lie strictly below x. */
function bucket(bounds: Float32Array, x: number): number {
  let lo = 0, hi = bounds.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (bounds[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export interface BlockwiseHost {
  /** One code index per value. */
  readonly q: Uint8Array;
  /** float32 absmax per block. */
  readonly absmax: Float32Array;
}

/** bitsandbytes' blockwise quantization of float32 values against a sorted code. */
export function quantizeBlockwiseHost(x: ArrayLike<number>, code: Float32Array, blocksize: number): BlockwiseHost {
  if (!Number.isInteger(blocksize) || blocksize <= 0) throw new Error(`blockwise quantization: block size ${blocksize} is not a positive integer`);
  const bounds = midpoints(code);
  const n = x.length;
  const blocks = Math.ceil(n / blocksize);
  const q = new Uint8Array(n);
  const absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const start = b * blocksize, end = Math.min(n, start + blocksize);
    let am = 0;
    for (let i = start; i < end; i++) am = Math.max(am, Math.abs(f(x[i])));
    const partial = end - start < blocksize;
    const clamped = Math.max(am, f(1e-38));
    absmax[b] = partial ? clamped : am;
    const inv = f(1 / clamped);
    for (let i = start; i < end; i++) {
      const v = f(x[i]);
      const s = Math.min(1, Math.max(-1, partial ? f(v / clamped) : f(v * inv)));
      q[i] = bucket(bounds, s);
    }
  }
  return { q, absmax };
}

/** Two 4-bit indices per byte, element 2i in the high nibble; an odd count is padded with `pad`. */
export function packNibbles(q: Uint8Array, pad: number): Uint8Array {
  const out = new Uint8Array(Math.ceil(q.length / 2));
  for (let i = 0; i < out.length; i++) out[i] = ((q[2 * i] & 15) << 4) | ((2 * i + 1 < q.length ? q[2 * i + 1] : pad) & 15);
  return out;
}

/** The first n 4-bit indices of packed bytes (high nibble first). */
export function unpackNibbles(packed: Uint8Array, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i & 1 ? packed[i >> 1] & 15 : packed[i >> 1] >> 4));
}

/** A 4-bit weight on the host, with the fields of bitsandbytes' QuantState. */
export interface Nf4Host {
  readonly shape: readonly number[];
  readonly blocksize: number;
  /** ceil(n / 2) bytes (quantize_4bit's output, flattened). */
  readonly packed: Uint8Array;
  /** The 16-entry code (quant_map). */
  readonly code: Float32Array;
  /** float32 absmax per block, or uint8 codes into nested.code when nested. */
  readonly absmax: Float32Array | Uint8Array;
  readonly nested: { readonly absmax: Float32Array; readonly code: Float32Array; readonly blocksize: number; readonly offset: number } | null;
}

export interface Nf4Options {
  /** Values per absmax block; default 64. */
  readonly blocksize?: number;
  /** Quantize the absmaxes too (bitsandbytes' compress_statistics / bnb_4bit_use_double_quant); default true. */
  readonly doubleQuant?: boolean;
}

/** Checks NF4 options, naming what is wrong. */
export function checkNf4Options(opts: Nf4Options, what = 'nf4'): { blocksize: number; doubleQuant: boolean } {
  const blocksize = opts.blocksize ?? NF4_BLOCKSIZE;
  if (!BNB_4BIT_BLOCKSIZES.includes(blocksize)) {
    throw new Error(`${what}: block size ${blocksize} is not one of bitsandbytes' 4-bit block sizes (${BNB_4BIT_BLOCKSIZES.join(', ')})`);
  }
  return { blocksize, doubleQuant: opts.doubleQuant ?? true };
}

/** The mean subtracted before double quantization: absmax.mean() in float32. */
export function nestedOffset(absmax: Float32Array): number {
  let s = 0;
  for (let i = 0; i < absmax.length; i++) s += absmax[i];
  return f(absmax.length === 0 ? 0 : s / absmax.length);
}

/** absmax - offset in float32, the values double quantization quantizes. */
export function centredAbsmax(absmax: Float32Array, offset: number): Float32Array {
  const out = new Float32Array(absmax.length);
  for (let i = 0; i < absmax.length; i++) out[i] = absmax[i] - offset;
  return out;
}

/** Double quantization of float32 absmaxes (quantize_blockwise(absmax - offset, blocksize=256)). */
export function doubleQuantizeHost(absmax: Float32Array): { q: Uint8Array; nested: NonNullable<Nf4Host['nested']> } {
  const offset = nestedOffset(absmax);
  const code = dynamicMap();
  const r = quantizeBlockwiseHost(centredAbsmax(absmax, offset), code, NESTED_BLOCKSIZE);
  return { q: r.q, nested: { absmax: r.absmax, code, blocksize: NESTED_BLOCKSIZE, offset } };
}

/** bitsandbytes' quantize_4bit(quant_type='nf4') of float32 values, with double quantization by default. */
export function quantizeNf4Host(values: ArrayLike<number>, shape: readonly number[], opts: Nf4Options = {}): Nf4Host {
  const { blocksize, doubleQuant } = checkNf4Options(opts);
  if (values.length !== numel(shape)) throw new Error(`nf4: ${values.length} values do not fill shape [${shape.join(', ')}]`);
  const { q, absmax } = quantizeBlockwiseHost(values, NF4_CODE, blocksize);
  const packed = packNibbles(q, 7);
  if (!doubleQuant) return { shape: [...shape], blocksize, packed, code: NF4_CODE.slice(), absmax, nested: null };
  const dq = doubleQuantizeHost(absmax);
  return { shape: [...shape], blocksize, packed, code: NF4_CODE.slice(), absmax: dq.q, nested: dq.nested };
}

/** The float32 absmax of every block, undoing double quantization as bitsandbytes does. */
export function blockScalesHost(w: Pick<Nf4Host, 'absmax' | 'nested'>): Float32Array {
  const n = w.nested;
  if (n === null) return Float32Array.from(w.absmax);
  return Float32Array.from(w.absmax, (q, b) => f(f(n.code[q] * n.absmax[Math.floor(b / n.blocksize)]) + n.offset));
}

/** dequantize_4bit: element i = code[nibble i] * absmax[i / blocksize], in float32, row-major. */
export function dequantizeNf4Host(w: Nf4Host): Float32Array {
  const n = numel(w.shape);
  const scales = blockScalesHost(w);
  const idx = unpackNibbles(w.packed, n);
  return Float32Array.from(idx, (k, i) => f(w.code[k] * scales[Math.floor(i / w.blocksize)]));
}
