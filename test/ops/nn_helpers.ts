// Helpers for the op tests: run a check with the CPU backend's thread pool at a given
// size (the ISA levels are isa_levels.ts's).
import { getBackend } from '../../src/backend/registry.js';
import { CpuBackend } from '../../src/backend/cpu/cpu.js';

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
