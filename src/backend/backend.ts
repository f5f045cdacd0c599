// The backend interface. A backend owns memory (device-resident buffers) and
// implements kernels; everything above it (ops, autograd, models) is backend-agnostic.
//
// Execution may be asynchronous: kernels are queued in order, and only read() (or
// sync()) waits for them. A backend lists the ops it supports; models check their
// op list against it before building (requireOps).
import type { DType } from '../tensor/dtype.js';
import type { Kernels } from './kernels.js';

/** An opaque, backend-owned allocation. Each backend subclasses it. */
export abstract class BackendBuffer {
  constructor(readonly bytes: number) {}
}

export interface Backend {
  readonly name: string;
  /** Kernels this backend implements; an absent kernel is an unsupported op. */
  readonly kernels: Partial<Kernels>;
  /**
   * The attention kernels take strided q, k, v, dout and write out, dq, dk, dv through
   * their strides (see kernels.ts); absent or false, they take contiguous tensors.
   */
  readonly stridedAttention?: boolean;
  /**
   * Activation dtypes the kernels compute in (absent: ['f32']). With 'bf16' listed, an op
   * whose floating inputs are all bf16 computes and returns bf16 (f32 arithmetic inside,
   * each output rounded once); elsewhere bf16 inputs are widened to f32 first
   * (computeDtype in src/ops/util.ts decides).
   */
  readonly computeDtypes?: readonly ('f32' | 'bf16')[];
  alloc(bytes: number): BackendBuffer;
  free(buf: BackendBuffer): void;
  /** Copies raw bytes of the given dtype into the buffer. */
  write(buf: BackendBuffer, byteOffset: number, data: Uint8Array, dtype: DType): void;
  /** Copies raw bytes of the given dtype back to the host, waiting for queued work. */
  read(buf: BackendBuffer, byteOffset: number, bytes: number, dtype: DType): Uint8Array;
  /** Waits for all queued work. */
  sync(): Promise<void>;
  /** Bytes of live allocations, for memory tests and reports. */
  liveBytes(): number;
  /** The most bytes live at once since the backend started, where it keeps that figure (a GPU's memory). */
  peakBytes?(): number;
}

export type KernelName = keyof Kernels;

/** Returns the kernel or throws naming the op and the backend. */
export function kernel<K extends KernelName>(backend: Backend, name: K): Kernels[K] {
  const k = backend.kernels[name];
  if (k === undefined) throw new Error(`backend '${backend.name}' does not support op '${name}'`);
  return k;
}

/** Throws, naming every missing op, when a backend lacks kernels a model needs. */
export function requireOps(backend: Backend, ops: readonly KernelName[], what = 'model'): void {
  const missing = ops.filter((op) => backend.kernels[op] === undefined);
  if (missing.length > 0) {
    throw new Error(`${what} cannot run on backend '${backend.name}': missing op${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
  }
}
