// Runs a check once per SIMD level of the CPU backend (scalar, avx2, avx512), so each
// compiled code path is compared with the reference: as node:test subtests (eachLevel;
// a level this CPU lacks shows up as a skipped subtest that says so) or in a loop
// within one test (forEachIsa).
import type { TestContext } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu.js';
import { getBackend } from '../../src/backend/registry.js';

export type IsaLevel = 'scalar' | 'avx2' | 'avx512';
const LEVELS: readonly IsaLevel[] = ['scalar', 'avx2', 'avx512'];

function cpuBackend(): CpuBackend {
  const cpu = getBackend('cpu');
  if (!(cpu instanceof CpuBackend)) throw new Error('the cpu backend is not a CpuBackend');
  return cpu;
}

/** The levels this machine can run. */
export function availableLevels(): IsaLevel[] {
  const best = cpuBackend().isa.best;
  return LEVELS.filter((_, i) => i <= LEVELS.findIndex((l) => l === best));
}

/** Runs fn(level) with the cpu backend at that level, restoring the previous level after. */
export function atLevel<T>(level: IsaLevel, fn: () => T): T {
  const cpu = cpuBackend();
  const previous = LEVELS.find((l) => l === cpu.isa.current) ?? 'scalar';
  cpu.setIsa(level);
  try {
    return fn();
  } finally {
    cpu.setIsa(previous);
  }
}

/** Runs fn once per level this machine can run, in one test, restoring the level after. */
export function forEachIsa(fn: (level: IsaLevel) => void): void {
  for (const level of availableLevels()) atLevel(level, () => fn(level));
}

/** One subtest per level; unavailable levels are reported as skipped. */
export async function eachLevel(t: TestContext, fn: (level: IsaLevel) => void): Promise<void> {
  const available = availableLevels();
  for (const level of LEVELS) {
    const skip = available.includes(level) ? false : `this CPU has no ${level} (best: ${cpuBackend().isa.best})`;
    await t.test(level, { skip }, () => atLevel(level, () => fn(level)));
  }
}
