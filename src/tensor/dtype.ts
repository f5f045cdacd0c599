// Data types: storage formats for tensors. Compute happens in f32 unless an op says
// otherwise; bf16/f16 are storage formats converted on load (round to nearest even).

export type DType = 'f32' | 'bf16' | 'f16' | 'int8' | 'uint8' | 'int32';

export const DTYPES: readonly DType[] = ['f32', 'bf16', 'f16', 'int8', 'uint8', 'int32'];

export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, bf16: 2, f16: 2, int8: 1, uint8: 1, int32: 4 };

/** Codes shared with the native backends (native/cpu/kernel.h). */
export const DTYPE_CODE: Readonly<Record<DType, number>> = { f32: 0, bf16: 1, f16: 2, int8: 3, uint8: 4, int32: 5 };

export function isFloat(dtype: DType): boolean {
  return dtype === 'f32' || dtype === 'bf16' || dtype === 'f16';
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;
  if (abs >= 0x477ff000) return sign | 0x7c00;
  if (abs < 0x38800000) {
    if (abs < 0x33000000) return sign;
    const exp = abs >>> 23;
    const mant = (abs & 0x7fffff) | 0x800000;
    const shift = 126 - exp;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && half & 1)) half++;
    return sign | half;
  }
  const r = abs - 0x38000000;
  let half = r >>> 13;
  const rem = r & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/** Rounds a value to what the dtype can store, as a number (used by references). */
export function roundTo(dtype: DType, x: number): number {
  switch (dtype) {
    case 'f32': return Math.fround(x);
    case 'bf16': return bf16BitsToF32(f32ToBf16Bits(x));
    case 'f16': return f16BitsToF32(f32ToF16Bits(x));
    case 'int8': return Number.isNaN(x) ? 0 : Math.max(-128, Math.min(127, Math.trunc(x)));
    case 'uint8': return Number.isNaN(x) ? 0 : Math.max(0, Math.min(255, Math.trunc(x)));
    case 'int32': return Number.isNaN(x) ? 0 : Math.max(-2147483648, Math.min(2147483647, Math.trunc(x)));
  }
}

/** Encodes numbers into the raw bytes of a dtype. */
export function encode(dtype: DType, values: ArrayLike<number>): Uint8Array {
  const n = values.length;
  switch (dtype) {
    case 'f32': return new Uint8Array(Float32Array.from(values).buffer);
    case 'int32': return new Uint8Array(Int32Array.from(values, (v) => roundTo('int32', v)).buffer);
    case 'int8': return new Uint8Array(Int8Array.from(values, (v) => roundTo('int8', v)).buffer);
    case 'uint8': return Uint8Array.from(values, (v) => roundTo('uint8', v));
    case 'bf16': {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = f32ToBf16Bits(values[i]);
      return new Uint8Array(out.buffer);
    }
    case 'f16': {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = f32ToF16Bits(values[i]);
      return new Uint8Array(out.buffer);
    }
  }
}

export type HostArray = Float32Array | Int32Array | Int8Array | Uint8Array;

/** Decodes raw bytes of a dtype: floats come back as Float32Array. */
export function decode(dtype: DType, bytes: Uint8Array): HostArray {
  const buf = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case 'f32': return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
    case 'int32': return new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
    case 'int8': return new Int8Array(buf.buffer, buf.byteOffset, buf.byteLength).slice();
    case 'uint8': return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength).slice();
    case 'bf16': case 'f16': {
      const h = new Uint16Array(buf.buffer, buf.byteOffset, buf.byteLength / 2);
      const out = new Float32Array(h.length);
      const conv = dtype === 'bf16' ? bf16BitsToF32 : f16BitsToF32;
      for (let i = 0; i < h.length; i++) out[i] = conv(h[i]);
      return out;
    }
  }
}
