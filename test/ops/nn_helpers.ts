// Helpers for the neural-network op tests: run a check under every SIMD level the
// CPU backend can use on this machine, so each compiled variant is compared with the
// reference.
import { getBackend } from '../../src/backend/registry.js';
import { CpuBackend } from '../../src/backend/cpu/cpu.js';

const LEVELS = ['scalar', 'avx2', 'avx512'] as const;
type Level = (typeof LEVELS)[number];
const isLevel = (s: string): s is Level => LEVELS.some((l) => l === s);

/** Runs fn once per ISA level up to the machine's best, restoring the level after. */
export function forEachIsa(fn: (isa: string) => void): void {
  const cpu = getBackend('cpu');
  if (!(cpu instanceof CpuBackend)) {
    fn('default');
    return;
  }
  const { current, best } = cpu.isa;
  if (!isLevel(current) || !isLevel(best)) throw new Error(`unknown ISA level ${current} / ${best}`);
  try {
    for (const level of LEVELS.slice(0, LEVELS.indexOf(best) + 1)) {
      cpu.setIsa(level);
      fn(level);
    }
  } finally {
    cpu.setIsa(current);
  }
}

/** Runs fn with the CPU backend's thread pool at n threads, restoring it after. */
export function withThreads(n: number, fn: () => void): void {
  const cpu = getBackend('cpu');
  if (!(cpu instanceof CpuBackend)) {
    fn();
    return;
  }
  const before = cpu.numThreads;
  cpu.setNumThreads(n);
  try {
    fn();
  } finally {
    cpu.setNumThreads(before);
  }
}
