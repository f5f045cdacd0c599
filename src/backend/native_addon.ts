// What the two native addons (native/cpu, native/cuda) have in common, as JS sees it:
// the entry points of native/common/addon.h, and where the built files live.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Tensor } from '../tensor/tensor.js';

/** A native buffer's handle: a slot number the addon resolves (stale handles are refused). */
export type BufferHandle = number;

/** The buffer, copy and kernel entry points both addons export (native/common/addon.h). */
export interface NativeAddon {
  alloc(bytes: number): BufferHandle;
  free(buf: BufferHandle): void;
  /** Copies the host bytes in (on a GPU, queued; the host bytes are consumed before it returns). */
  write(buf: BufferHandle, byteOffset: number, data: ArrayBufferView): void;
  /** Copies bytes out, after any queued work. */
  read(buf: BufferHandle, byteOffset: number, bytes: number): ArrayBuffer;
  kernelNames(): string[];
  /** Runs (on a GPU, queues) kernel `id` of kernelNames(). */
  run(id: number, buffers: BufferHandle[], byteOffsets: number[], ints: number[], floats: number[]): void;
  liveBytes(): number;
  /** The most bytes live at once since the last resetPeak() (or since the addon loaded). */
  peakBytes(): number;
  /** Restarts the high-water mark from the bytes live now. */
  resetPeak(): void;
  /** Bytes held by the caching allocator for reuse (not live). */
  cachedBytes(): number;
  /** Returns every cached block to the system (or the device). */
  emptyCache(): void;
}

/**
 * run()'s buffers and byte offsets for `tensors`, each buffer resolved by `handleOf` (which
 * checks the tensor lives on the addon's backend): one pass, as this runs for every kernel call.
 */
export function runOperands(tensors: readonly Tensor[], handleOf: (t: Tensor) => BufferHandle): [BufferHandle[], number[]] {
  const buffers = new Array<BufferHandle>(tensors.length);
  const offsets = new Array<number>(tensors.length);
  for (let i = 0; i < tensors.length; i++) {
    buffers[i] = handleOf(tensors[i]);
    offsets[i] = tensors[i].byteOffset;
  }
  return [buffers, offsets];
}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('finlora: cannot locate the package root');
    dir = parent;
  }
  return dir;
}

/** Where a built addon file (finlora_cpu.node, finlora_cuda.node) lives. */
export function addonPath(file: string): string {
  return join(packageRoot(), 'build', 'Release', file);
}
