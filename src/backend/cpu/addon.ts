// Loads the CPU backend's native addon (built by `npm install` through node-gyp) and
// gives it a typed surface.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A native buffer's handle: a slot number the addon resolves (stale handles are refused). */
export type NativeBuffer = number;

export interface CpuAddon {
  alloc(bytes: number): NativeBuffer;
  free(buf: NativeBuffer): void;
  write(buf: NativeBuffer, byteOffset: number, data: ArrayBufferView): void;
  read(buf: NativeBuffer, byteOffset: number, bytes: number): ArrayBuffer;
  kernelNames(): string[];
  run(id: number, buffers: NativeBuffer[], byteOffsets: number[], ints: number[], floats: number[]): void;
  liveBytes(): number;
  /** The most bytes live at once since the last resetPeak() (or since the addon loaded). */
  peakBytes(): number;
  /** Restarts the high-water mark from the bytes live now. */
  resetPeak(): void;
  /** Bytes held by the caching allocator for reuse (not live). */
  cachedBytes(): number;
  /** Returns every cached block to the system. */
  emptyCache(): void;
  isa(): { current: 'avx512' | 'avx2' | 'scalar'; best: 'avx512' | 'avx2' | 'scalar' };
  setIsa(isa: 'avx512' | 'avx2' | 'scalar'): void;
  numThreads(): number;
  setNumThreads(n: number): void;
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

let addon: CpuAddon | null = null;

export function loadCpuAddon(): CpuAddon {
  if (addon !== null) return addon;
  const root = packageRoot();
  const path = join(root, 'build', 'Release', 'finlora_cpu.node');
  if (!existsSync(path)) {
    throw new Error(`finlora: the CPU addon is not built (${path} is missing); run 'npm install' or 'npm run build:native'`);
  }
  const require = createRequire(import.meta.url);
  addon = require(path) as CpuAddon;
  return addon;
}
