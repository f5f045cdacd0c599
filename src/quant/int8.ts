// bitsandbytes' 8-bit weight format (LLM.int8(), Dettmers et al. 2022): plain
// TypeScript quantize / dequantize references, used by the reference backend and by
// tests (the cpu backend's kernels are native/cpu/kernels/quantize.cc and qmatmul.cc).
//
// Follows bitsandbytes' public source:
//   - Int8Params._quantize (nn/modules.py) casts the weight to float16 first, then
//     int8_vectorwise_quant (backends/default/ops.py):
//       SCB[r] = max_c |W[r, c]|                         (float32, one per output row)
//       CB[r, c] = round(W[r, c] * (127 / SCB[r]))       (float32 product, torch.round:
//                                                         half to even) as int8
//   - int8_vectorwise_dequant: W ≈ CB * SCB / 127.
//   - Linear8bitLt's state dict: `weight` (int8 [out, in], the CB) and `SCB` (float32
//     [out]) beside it, plus `weight_format` (uint8 scalar, 0 = row-major, the only
//     layout bitsandbytes still loads).
import { roundTo } from '../tensor/dtype.js';

const f = Math.fround;

/** Round half to even, as torch.round and the CUDA kernel's __float2int_rn do. */
export function roundHalfEven(x: number): number {
  const fl = Math.floor(x);
  const d = x - fl;
  if (d < 0.5) return fl;
  if (d > 0.5) return fl + 1;
  return fl % 2 === 0 ? fl : fl + 1;
}

export interface Int8Host {
  readonly rows: number;
  readonly cols: number;
  /** int8 [rows, cols], row-major. */
  readonly cb: Int8Array;
  /** float32 [rows]: each row's absmax. */
  readonly scb: Float32Array;
}

/** bitsandbytes' int8 row quantization of a [rows, cols] weight given as numbers (any float dtype's values). */
export function quantizeInt8Host(values: ArrayLike<number>, rows: number, cols: number): Int8Host {
  if (values.length !== rows * cols) throw new Error(`int8: ${values.length} values do not fill [${rows}, ${cols}]`);
  const cb = new Int8Array(rows * cols);
  const scb = new Float32Array(rows);
  const h = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    let absmax = 0;
    for (let c = 0; c < cols; c++) {
      h[c] = roundTo('f16', values[r * cols + c]);
      absmax = Math.max(absmax, Math.abs(h[c]));
    }
    scb[r] = absmax;
    if (absmax === 0) continue;
    const scale = f(127 / absmax);
    for (let c = 0; c < cols; c++) cb[r * cols + c] = Math.max(-127, Math.min(127, roundHalfEven(f(h[c] * scale))));
  }
  return { rows, cols, cb, scb };
}

/** W = CB * SCB / 127, row-major. */
export function dequantizeInt8Host(w: Int8Host): Float64Array {
  const out = new Float64Array(w.rows * w.cols);
  for (let r = 0; r < w.rows; r++) {
    const s = w.scb[r] / 127;
    for (let c = 0; c < w.cols; c++) out[r * w.cols + c] = w.cb[r * w.cols + c] * s;
  }
  return out;
}
