// Loads the CUDA backend's native addon (built by `npm run build:cuda` where nvcc and
// cuBLAS exist, never by `npm install`) and gives it a typed surface.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A device buffer's handle: a slot number the addon resolves (stale handles are refused). */
export type CudaBufferHandle = number;

export interface CudaDeviceInfo {
  readonly name: string;
  readonly totalBytes: number;
  readonly freeBytes: number;
  readonly major: number;
  readonly minor: number;
  readonly multiprocessors: number;
}

export interface CudaAddon {
  alloc(bytes: number): CudaBufferHandle;
  free(buf: CudaBufferHandle): void;
  /** Queues a host-to-device copy; the host bytes are consumed before it returns. */
  write(buf: CudaBufferHandle, byteOffset: number, data: ArrayBufferView): void;
  /** Waits for queued work, then copies device bytes back. */
  read(buf: CudaBufferHandle, byteOffset: number, bytes: number): ArrayBuffer;
  kernelNames(): string[];
  /** Queues a kernel on the backend's stream and returns without waiting for it. */
  run(id: number, buffers: CudaBufferHandle[], byteOffsets: number[], ints: number[], floats: number[]): void;
  /** Waits for every queued kernel and copy; throws the first error one of them raised. */
  sync(): void;
  liveBytes(): number;
  peakBytes(): number;
  resetPeak(): void;
  /** Bytes held by the caching allocator for reuse (not live). */
  cachedBytes(): number;
  /** Returns every cached block to the device. */
  emptyCache(): void;
  /** Visible GPUs; 0 when there is none or no driver (never throws). */
  deviceCount(): number;
  deviceInfo(): CudaDeviceInfo;
}

export const CUDA_NOT_BUILT = 'the CUDA backend is not built: run npm run build:cuda on a machine with nvcc and cuBLAS';

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('finlora: cannot locate the package root');
    dir = parent;
  }
  return dir;
}

export function cudaAddonPath(): string {
  return join(packageRoot(), 'build', 'Release', 'finlora_cuda.node');
}

let addon: CudaAddon | null = null;

/** Whether the addon file exists (it may still fail to load, e.g. without a driver). */
export function cudaAddonBuilt(): boolean {
  return existsSync(cudaAddonPath());
}

export function loadCudaAddon(): CudaAddon {
  if (addon !== null) return addon;
  const path = cudaAddonPath();
  if (!existsSync(path)) throw new Error(`finlora: ${CUDA_NOT_BUILT} (${path} is missing)`);
  const require = createRequire(import.meta.url);
  try {
    addon = require(path) as CudaAddon;
  } catch (e) {
    // Typically libcublas or the driver library is absent on this machine.
    throw new Error(`finlora: the CUDA addon ${path} failed to load: ${e instanceof Error ? e.message : String(e)}`);
  }
  return addon;
}
