// The reference backend: slow, plain TypeScript kernels that compute in f64 and are
// used only by tests, to check every other backend and every gradient. f32 tensors
// keep f64 values here (no rounding), so finite differences on this backend are
// accurate; bf16, f16 and integer tensors round to their dtype on every store, which
// is how its kernels take bf16 activations (computeDtypes).
import { Backend, BackendBuffer } from '../backend.js';
import type { Kernels } from '../kernels.js';
import { type DType, DTYPE_BYTES, decode, encode, roundTo } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import { elementwiseKernels } from './elementwise.js';
import { linalgKernels } from './linalg.js';
import { nnKernels } from './nn.js';
import { optimKernels } from './optim.js';
import { quantKernels } from './quant.js';

export class RefBuffer extends BackendBuffer {
  /** One slot per element; sized for the smallest dtype so any dtype fits. */
  readonly values: Float64Array;
  constructor(bytes: number) {
    super(bytes);
    this.values = new Float64Array(bytes);
  }
}

export function refValues(t: Tensor): Float64Array {
  const b = t.storage.buffer;
  if (!(b instanceof RefBuffer)) throw new Error(`reference backend: ${t} does not live on the reference backend`);
  t.assertAlive('reference kernel');
  return b.values;
}

/** Flat storage index of each logical (row-major) element of a strided view. */
export function stridedIndices(t: Tensor): Int32Array | Float64Array {
  const n = t.size;
  const idx = new Float64Array(n);
  const nd = t.rank;
  const counter = new Array<number>(nd).fill(0);
  for (let i = 0; i < n; i++) {
    let off = t.offset;
    for (let d = 0; d < nd; d++) off += counter[d] * t.strides[d];
    idx[i] = off;
    for (let d = nd - 1; d >= 0; d--) {
      if (++counter[d] < t.shape[d]) break;
      counter[d] = 0;
    }
  }
  return idx;
}

/** The logical values of a (possibly strided) tensor, row-major. */
export function read(t: Tensor): Float64Array {
  const vals = refValues(t);
  const idx = stridedIndices(t);
  const out = new Float64Array(idx.length);
  for (let i = 0; i < idx.length; i++) out[i] = vals[idx[i]];
  return out;
}

/** Stores row-major values into a (possibly strided) tensor, rounding to its dtype. */
export function write(t: Tensor, values: ArrayLike<number>): void {
  const vals = refValues(t);
  const idx = stridedIndices(t);
  const round = t.dtype === 'f32' ? (x: number) => x : (x: number) => roundTo(t.dtype, x);
  for (let i = 0; i < idx.length; i++) vals[idx[i]] = round(values[i]);
}

export class ReferenceBackend implements Backend {
  readonly name = 'reference';
  // Its kernels read and write every tensor through its strides.
  readonly stridedAttention = true;
  /**
   * Every store already rounds to the tensor's dtype, so bf16 activations follow the
   * contract (f64 arithmetic, one rounding per output) and CI tests the bf16 plumbing.
   * Tests set ['f32'] to compute as a backend without bf16 compute (cpu) does.
   */
  computeDtypes: readonly ('f32' | 'bf16')[] = ['f32', 'bf16'];
  readonly kernels: Partial<Kernels> = { ...elementwiseKernels(), ...linalgKernels(), ...nnKernels(), ...quantKernels(), ...optimKernels() };
  private live = 0;

  alloc(bytes: number): BackendBuffer {
    this.live += bytes;
    return new RefBuffer(bytes);
  }
  free(buf: BackendBuffer): void {
    this.live -= buf.bytes;
  }
  write(buf: BackendBuffer, byteOffset: number, data: Uint8Array, dtype: DType): void {
    if (!(buf instanceof RefBuffer)) throw new Error('reference backend: foreign buffer');
    const values = decode(dtype, data);
    buf.values.set(values, byteOffset / DTYPE_BYTES[dtype]);
  }
  read(buf: BackendBuffer, byteOffset: number, bytes: number, dtype: DType): Uint8Array {
    if (!(buf instanceof RefBuffer)) throw new Error('reference backend: foreign buffer');
    const start = byteOffset / DTYPE_BYTES[dtype];
    return encode(dtype, buf.values.subarray(start, start + bytes / DTYPE_BYTES[dtype]));
  }
  async sync(): Promise<void> {}
  liveBytes(): number {
    return this.live;
  }
}
