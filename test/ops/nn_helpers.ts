// Helpers for the neural-network op tests: run a check under every SIMD level the
// CPU backend can use on this machine, so each compiled variant is compared with the
// reference.
import { getBackend } from '../../src/backend/registry.js';
import { CpuBackend } from '../../src/backend/cpu/cpu.js';

const LEVELS = ['scalar', 'avx2', 'avx512'] as const;

/** Runs fn once per ISA level up to the machine's best, restoring the level after. */
export function forEachIsa(fn: (isa: string) => void): void {
  const cpu = getBackend('cpu');
  if (!(cpu instanceof CpuBackend)) {
    fn('default');
    return;
  }
  const { current, best } = cpu.isa;
  const usable = LEVELS.slice(0, LEVELS.indexOf(best as (typeof LEVELS)[number]) + 1);
  try {
    for (const level of usable) {
      cpu.setIsa(level);
      fn(level);
    }
  } finally {
    cpu.setIsa(current as (typeof LEVELS)[number]);
  }
}
