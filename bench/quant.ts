// Quantized-matmul benchmark: the cpu backend's quantizedMatmul kernel on int8 and NF4
// (double-quantized) weights against its f32 GEMM kernel (`matmul`, the same weight in
// f32, transposed by strides as linear() passes it) on the same shapes, in
// the same run: a Linear's forward y = x·Wᵀ and its input gradient dx = dy·W, for
// prefill-sized products (M = 512 tokens) and a decode step (M = 1). Each product is
// first checked against f64 dot products with the dequantized weight at sampled
// entries, then timed into preallocated outputs; the three variants take turns run by
// run, so they see the same machine load, and the best run of each is reported with
// the median.
//
// `npm run bench` runs this after the GEMM benchmark; benchQuant() is exported too.
import { pathToFileURL } from 'node:url';
import { CpuBackend } from '../src/backend/cpu/cpu.js';
import { getBackend } from '../src/backend/registry.js';
import { tensor } from '../src/ops/creation.js';
import { dequantize } from '../src/quant/ops.js';
import { kernel } from '../src/backend/backend.js';
import { type QuantizedWeight, quantizeInt8, quantizeNf4 } from '../src/quant/weight.js';
import { Rng } from '../src/tensor/rng.js';
import { empty, scope, type Tensor } from '../src/tensor/tensor.js';
import { median, printTable, randomMatrix, sampledProductError, summarize, timeOnce, type Timing } from './util.js';

export interface QuantCase {
  /** Rows of x (tokens). */
  readonly M: number;
  /** in_features. */
  readonly K: number;
  /** out_features. */
  readonly N: number;
}

export const DEFAULT_CASES: readonly QuantCase[] = [
  { M: 512, K: 2048, N: 2048 },
  { M: 512, K: 2048, N: 8192 },
  { M: 1, K: 2048, N: 8192 },
];

type Variant = 'f32' | 'int8' | 'nf4';
const VARIANTS: readonly Variant[] = ['f32', 'int8', 'nf4'];

export interface QuantRow extends QuantCase {
  readonly direction: 'x·Wᵀ' | 'dy·W';
  /** Best and median seconds per variant. */
  readonly times: Readonly<Record<Variant, Timing>>;
  /**
   * Median over runs of f32 time / quantized time, each ratio from the two runs taken
   * back to back: steadier than a ratio of medians when other work comes and goes.
   */
  readonly pairedRatio: Readonly<Record<'int8' | 'nf4', number>>;
  readonly maxError: number;
}

function benchCase(c: QuantCase, reps: number, rng: Rng): QuantRow[] {
  return scope(() => {
    const { M, K, N } = c;
    const w = tensor(randomMatrix(N * K, rng, 0.1), [N, K]);
    const q: Record<'int8' | 'nf4', QuantizedWeight> = { int8: quantizeInt8(w), nf4: quantizeNf4(w) };
    try {
      const rows: QuantRow[] = [];
      for (const transW of [true, false]) {
        // forward: x [M, K] · Wᵀ -> [M, N]; gradient: dy [M, N] · W -> [M, K]
        const inner = transW ? K : N, outer = transW ? N : K;
        const aHost = randomMatrix(M * inner, rng);
        const a = tensor(aHost, [M, inner]);
        const outs: Record<Variant, Tensor> = { f32: empty([M, outer], 'f32', a.backend), int8: empty([M, outer], 'f32', a.backend), nf4: empty([M, outer], 'f32', a.backend) };
        const run: Record<Variant, () => void> = {
          f32: () => kernel(a.backend, 'matmul')(a, w, outs.f32, { transA: false, transB: transW, alpha: 1, accumulate: false }),
          int8: () => kernel(a.backend, 'quantizedMatmul')(a, q.int8, outs.int8, { transW, accumulate: false }),
          nf4: () => kernel(a.backend, 'quantizedMatmul')(a, q.nf4, outs.nf4, { transW, accumulate: false }),
        };
        let maxError = 0;
        for (const v of ['int8', 'nf4'] as const) {
          run[v]();
          const W = Float32Array.from(scope(() => dequantize(q[v]).toArray()));
          maxError = Math.max(maxError, sampledProductError(aHost, W, Float32Array.from(outs[v].toArray()), M, inner, outer, transW, 64, new Rng(7)));
        }
        if (!(maxError < 1e-5)) throw new Error(`quantized matmul ${M}x${K}x${N}: result differs from the f64 reference (relative error ${maxError})`);
        for (const v of VARIANTS) run[v]();
        const times: Record<Variant, number[]> = { f32: [], int8: [], nf4: [] };
        for (let r = 0; r < reps; r++) for (const v of VARIANTS) times[v].push(timeOnce(run[v]));
        rows.push({
          ...c,
          direction: transW ? 'x·Wᵀ' : 'dy·W',
          times: { f32: summarize(times.f32), int8: summarize(times.int8), nf4: summarize(times.nf4) },
          pairedRatio: {
            int8: median(times.f32.map((t, i) => t / times.int8[i])),
            nf4: median(times.f32.map((t, i) => t / times.nf4[i])),
          },
          maxError,
        });
      }
      return rows;
    } finally {
      q.int8.dispose();
      q.nf4.dispose();
    }
  });
}

/** Runs the benchmark and prints a table; returns the rows. */
export function benchQuant(cases: readonly QuantCase[] = DEFAULT_CASES, reps = 11, log: (s: string) => void = console.log): QuantRow[] {
  const cpu = getBackend('cpu');
  const isa = cpu instanceof CpuBackend ? `${cpu.isa.current} (best ${cpu.isa.best}), ${cpu.numThreads} threads` : cpu.name;
  log(`finlora cpu quantized matmul vs f32 GEMM: ${isa}`);
  const rng = new Rng(4321);
  const rows = cases.flatMap((c) => benchCase(c, reps, rng));
  const gf = (r: QuantRow, s: number) => (2 * r.M * r.N * r.K) / s / 1e9;
  const header = ['M x K x N', 'product', 'f32 GFLOP/s', 'int8 GFLOP/s', 'int8/f32 best', 'int8/f32 paired', 'nf4 GFLOP/s', 'nf4/f32 best', 'nf4/f32 paired', 'max rel err'];
  const ratio = (r: QuantRow, v: 'int8' | 'nf4') => (r.times.f32.bestS / r.times[v].bestS).toFixed(2);
  const table = rows.map((r) => [
    `${r.M} x ${r.K} x ${r.N}`,
    r.direction,
    gf(r, r.times.f32.bestS).toFixed(1),
    gf(r, r.times.int8.bestS).toFixed(1),
    ratio(r, 'int8'),
    r.pairedRatio.int8.toFixed(2),
    gf(r, r.times.nf4.bestS).toFixed(1),
    ratio(r, 'nf4'),
    r.pairedRatio.nf4.toFixed(2),
    r.maxError.toExponential(1),
  ]);
  printTable(header, table, 2, log);
  log(`\n${reps} interleaved runs after warm-up; GFLOP/s of the best run; int8/f32 and nf4/f32 = quantized throughput / f32 throughput: of the best runs, and the median of back-to-back pairs`);
  log('weights: W [N, K] = [out_features, in_features]; x·Wᵀ is a Linear forward, dy·W its input gradient; nf4 is double-quantized (bitsandbytes defaults)');
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  benchQuant();
}
