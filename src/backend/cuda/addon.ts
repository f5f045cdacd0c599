// Loads the CUDA backend's native addon (built by `npm run build:cuda` where nvcc and
// cuBLAS exist, never by `npm install`) and gives it a typed surface.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { addonPath, type BufferHandle, type NativeAddon } from '../native_addon.js';

export interface CudaDeviceInfo {
  readonly name: string;
  readonly totalBytes: number;
  readonly freeBytes: number;
  readonly major: number;
  readonly minor: number;
  readonly multiprocessors: number;
}

/** NativeAddon's entry points over device memory: write queues its copy, run queues the kernel on the backend's stream. */
export interface CudaAddon extends NativeAddon {
  /** Waits for every queued kernel and copy; throws the first error one of them raised. */
  sync(): void;
  /** Visible GPUs; 0 when there is none or no driver (never throws). */
  deviceCount(): number;
  deviceInfo(): CudaDeviceInfo;
  /** While on, every launch and copy is bracketed by CUDA events on the stream (no waiting per launch). */
  setProfiling(on: boolean): void;
  /**
   * GPU milliseconds per key since the last read, flat: [key, calls, ms, ...]; waits for the
   * stream. A launch's key is run()'s sixth argument (PROFILE_UNLABELLED - its kernel id without
   * one); host-to-device copies are PROFILE_COPY_IN, device-to-host ones PROFILE_COPY_OUT.
   */
  profileRead(): number[];
  /** run() with a sixth argument: the key its GPU time is profiled under. */
  run(id: number, buffers: BufferHandle[], byteOffsets: number[], ints: number[], floats: number[], profileKey?: number): void;
}

/** The profile keys of copies and unlabelled launches (native/cuda/kernel.h, namespace profile). */
export const PROFILE_COPY_IN = -1;
export const PROFILE_COPY_OUT = -2;
export const PROFILE_UNLABELLED = -3;

export const CUDA_NOT_BUILT = 'the CUDA backend is not built: run npm run build:cuda on a machine with nvcc and cuBLAS';

export function cudaAddonPath(): string {
  return addonPath('finlora_cuda.node');
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
