// Loads the CPU backend's native addon (built by `npm install` through node-gyp) and
// gives it a typed surface.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { addonPath, type NativeAddon } from '../native_addon.js';


export interface CpuAddon extends NativeAddon {
  isa(): { current: 'avx512' | 'avx2' | 'scalar'; best: 'avx512' | 'avx2' | 'scalar' };
  setIsa(isa: 'avx512' | 'avx2' | 'scalar'): void;
  numThreads(): number;
  setNumThreads(n: number): void;
}

let addon: CpuAddon | null = null;

export function loadCpuAddon(): CpuAddon {
  if (addon !== null) return addon;
  const path = addonPath('finlora_cpu.node');
  if (!existsSync(path)) {
    throw new Error(`finlora: the CPU addon is not built (${path} is missing); run 'npm install' or 'npm run build:native'`);
  }
  const require = createRequire(import.meta.url);
  addon = require(path) as CpuAddon;
  return addon;
}
