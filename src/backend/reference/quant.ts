// Reference kernels for quantized weights (src/quant/): the weight is decoded in full
// from its definition (src/quant/int8.ts, src/quant/nf4.ts) and multiplied in f64. Used
// only by tests, to check the cpu kernels that decode on the fly.
import type { Kernels, QuantizedOperand } from '../kernels.js';
import { dequantizeInt8Host, quantizeInt8Host } from '../../quant/int8.js';
import { blockScalesHost, packNibbles, quantizeBlockwiseHost, unpackNibbles } from '../../quant/nf4.js';
import { doraRowNorms } from './nn.js';
import { read, write } from './reference.js';

/** The weight W [rows, cols], row-major, in f64. */
function decode(w: QuantizedOperand): Float64Array {
  if (w.format === 'int8') {
    return dequantizeInt8Host({ rows: w.rows, cols: w.cols, cb: Int8Array.from(read(w.cb)), scb: Float32Array.from(read(w.scb)) });
  }
  const n = w.rows * w.cols;
  const nested = w.nested === null ? null : {
    absmax: Float32Array.from(read(w.nested.absmax)),
    code: Float32Array.from(read(w.nested.code)),
    blocksize: w.nested.blocksize,
    offset: w.nested.offset,
  };
  const absmax = nested === null ? Float32Array.from(read(w.absmax)) : Uint8Array.from(read(w.absmax));
  const scales = blockScalesHost({ absmax, nested });
  const code = read(w.code);
  const idx = unpackNibbles(Uint8Array.from(read(w.packed)), n);
  // bitsandbytes' dequantize_4bit multiplies in float32.
  return Float64Array.from(idx, (k, i) => Math.fround(code[k] * scales[Math.floor(i / w.blocksize)]));
}

export function quantKernels(): Partial<Kernels> {
  return {
    quantizedMatmul: (a, w, out, { transW, accumulate }) => {
      const W = decode(w);
      const va = read(a);
      const M = a.shape[0];
      const [K, N] = transW ? [w.cols, w.rows] : [w.rows, w.cols];
      const r = accumulate ? read(out) : new Float64Array(M * N);
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < N; n++) {
          let acc = 0;
          for (let k = 0; k < K; k++) acc += va[m * K + k] * (transW ? W[n * K + k] : W[k * N + n]);
          r[m * N + n] += acc;
        }
      }
      write(out, r);
    },
    dequantize: (w, out) => write(out, decode(w)),
    doraNormQuantized: (w, a, b, out, s) => write(out, doraRowNorms(decode(w), read(a), read(b), w.rows, w.cols, a.shape[0], s)),
    quantizeInt8: (w, cb, scb) => {
      const [rows, cols] = w.shape;
      const q = quantizeInt8Host(read(w), rows, cols);
      write(cb, q.cb);
      write(scb, q.scb);
    },
    quantizeBlockwise: (x, code, q, absmax, blocksize, pack4) => {
      const codeF = Float32Array.from(read(code));
      const r = quantizeBlockwiseHost(read(x), codeF, blocksize);
      if (pack4) {
        const zero = quantizeBlockwiseHost([0], codeF, 1).q[0];
        write(q, packNibbles(r.q, zero));
      } else {
        write(q, r.q);
      }
      write(absmax, r.absmax);
    },
  };
}
