// GEMM benchmark: finlora's CPU matmul against numpy's (OpenBLAS) in the same run, on
// a square product and the projection shapes of a Llama layer (M tokens x K in x N out).
// Each product is first checked against f64 dot products at sampled entries, then
// timed (warm-up, then the best and the median of several runs). numpy runs in one
// python3 child process that answers one request per line, so the two libraries take
// turns run by run (with a pause before each turn) and see the same machine load. That child's environment drops
// OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE so OpenBLAS picks its kernel for this CPU.
//
// `node dist/bench/gemm.js train` runs TRAIN_CASES instead: the frozen products of the
// d256 training benchmark (bench/train_cpu.ts), forward x @ Wᵀ and backward dY @ W.
//
// `npm run bench` runs this file; benchGemm() is exported for a wider benchmark runner.
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { getBackend } from '../src/backend/registry.js';
import { CpuBackend } from '../src/backend/cpu/cpu.js';
import { tensor } from '../src/ops/creation.js';
import { matmul } from '../src/ops/matmul.js';
import { Rng } from '../src/tensor/rng.js';
import { JsonLineWorker, printTable, randomMatrix, sampledProductError, summarize, timeOnce, type Timing } from './util.js';

export type { Timing } from './util.js';

export interface GemmCase {
  readonly M: number;
  readonly K: number;
  readonly N: number;
  /** b stored [N, K] and used transposed: the Linear layer layout (x @ Wᵀ). */
  readonly transB: boolean;
}

export interface GemmRow extends GemmCase {
  readonly finlora: Timing;
  readonly numpy: Timing | null;
  readonly maxError: number;
}

export const DEFAULT_CASES: readonly GemmCase[] = [
  { M: 1024, K: 1024, N: 1024, transB: false },
  { M: 512, K: 2048, N: 2048, transB: false },
  { M: 512, K: 2048, N: 8192, transB: false },
  { M: 512, K: 8192, N: 2048, transB: false },
  { M: 512, K: 2048, N: 2048, transB: true },
  { M: 512, K: 2048, N: 8192, transB: true },
  { M: 512, K: 8192, N: 2048, transB: true },
];

// The frozen base weights of bench/train_cpu.ts's d256 shape (8 x 128 tokens, hidden
// 256, intermediate 688, vocab 32000): each Linear runs forward as x @ Wᵀ and backward
// as dX = dY @ W (no dW: the weights are frozen). The lm_head pair is about half the step.
export const TRAIN_CASES: readonly GemmCase[] = [
  { M: 1024, K: 256, N: 32000, transB: true },
  { M: 1024, K: 32000, N: 256, transB: false },
  { M: 1024, K: 256, N: 256, transB: true },
  { M: 1024, K: 256, N: 256, transB: false },
  { M: 1024, K: 256, N: 688, transB: true },
  { M: 1024, K: 688, N: 256, transB: false },
  { M: 1024, K: 688, N: 256, transB: true },
  { M: 1024, K: 256, N: 688, transB: false },
  { M: 512, K: 768, N: 768, transB: true },
  { M: 512, K: 768, N: 32000, transB: true },
  { M: 512, K: 32000, N: 768, transB: false },
];

// The numpy side: prints one JSON line describing itself, then answers
// "setup M K N transB" (make the operands, run twice to warm up) and "run" (the
// seconds of one product) lines.
const NUMPY_WORKER = String.raw`
import json, sys, time
try:
    import numpy as np
except ImportError:
    print(json.dumps({"error": "numpy is not installed for " + sys.executable}), flush=True)
    sys.exit(0)
info = {"numpy": np.__version__, "python": sys.executable}
try:
    from threadpoolctl import threadpool_info
    info["blas"] = ["%s %s (%s kernel, %s threads)" % (d.get("internal_api"), d.get("version"), d.get("architecture"), d.get("num_threads")) for d in threadpool_info()]
except ImportError:
    # No threadpoolctl: ask the OpenBLAS library numpy loaded for its kernel directly.
    import ctypes
    libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "openblas" in l.lower() and ".so" in l})
    found = []
    for path in libs:
        lib = ctypes.CDLL(path)
        desc = path.rsplit("/", 1)[-1]
        for prefix in ("openblas", "scipy_openblas"):
            for suffix in ("", "64_"):
                f = getattr(lib, prefix + "_get_corename" + suffix, None)
                g = getattr(lib, prefix + "_get_num_threads" + suffix, None)
                if f is not None:
                    f.restype = ctypes.c_char_p
                    desc += " (%s kernel, %s threads)" % (f().decode(), g() if g is not None else "?")
                    break
            else:
                continue
            break
        found.append(desc)
    info["blas"] = found or ["unknown (threadpoolctl not installed, no OpenBLAS library found)"]
print(json.dumps(info), flush=True)
rng = np.random.default_rng(0)
f = None
for line in sys.stdin:
    words = line.split()
    if words[0] == "setup":
        M, K, N, tb = (int(v) for v in words[1:])
        a = rng.random((M, K), dtype=np.float32) - 0.5
        b = rng.random((N, K) if tb else (K, N), dtype=np.float32) - 0.5
        f = (lambda: a @ b.T) if tb else (lambda: a @ b)
        f(); f()
        print(json.dumps({"ok": True}), flush=True)
    else:
        t = time.perf_counter(); f(); t = time.perf_counter() - t
        print(json.dumps({"seconds": t}), flush=True)
`;

class NumpyWorker {
  private constructor(
    private readonly worker: JsonLineWorker,
    readonly info: string,
  ) {}

  /** Starts python3 with numpy, or returns the reason it cannot. */
  static async start(): Promise<NumpyWorker | string> {
    const env = { ...process.env };
    delete env.OPENBLAS_CORETYPE;
    delete env.OPENBLAS_L2_SIZE;
    type Hello = { error?: string; numpy?: string; blas?: string[]; python?: string };
    const started = await JsonLineWorker.start<Hello>('numpy worker', 'python3', ['-c', NUMPY_WORKER], env, 'pipe');
    if (typeof started === 'string') return started;
    const { worker, hello } = started;
    return new NumpyWorker(worker, `numpy ${hello.numpy} (${hello.python}); BLAS: ${(hello.blas ?? []).join('; ')}`);
  }

  async setup(c: GemmCase): Promise<void> {
    await this.worker.ask(`setup ${c.M} ${c.K} ${c.N} ${c.transB ? 1 : 0}`);
  }

  /** Seconds of one product. */
  async run(): Promise<number> {
    const r = await this.worker.ask<{ seconds?: number }>('run');
    if (r.seconds === undefined) throw new Error('numpy worker: no timing');
    return r.seconds;
  }

  close(): void {
    this.worker.close();
  }
}

// OpenBLAS's workers busy-wait for a while after a product, so a product started right
// after numpy's would share the cores with two spinning threads. A pause before each
// turn lets them stop (finlora's pool sleeps at once; both sides get the same pause), as
// bench/train_cpu does. Products of a millisecond or less still vary a lot from run to
// run on this shared machine: compare their medians over several runs.
const PAUSE_MS = 150;

/**
 * Checks and times finlora's product, taking turns run by run with `other` (numpy's
 * run, when there is one) so that both see the same machine load.
 */
async function timeCase(
  c: GemmCase,
  reps: number,
  rng: Rng,
  other: (() => Promise<number>) | null,
): Promise<{ mine: number[]; theirs: number[]; maxError: number }> {
  const a = randomMatrix(c.M * c.K, rng);
  const b = randomMatrix(c.K * c.N, rng);
  const ta = tensor(a, [c.M, c.K]);
  const tb = tensor(b, c.transB ? [c.N, c.K] : [c.K, c.N]);
  try {
    const first = matmul(ta, tb, { transB: c.transB });
    const maxError = sampledProductError(a, b, Float32Array.from(first.toArray()), c.M, c.K, c.N, c.transB, 64, new Rng(7));
    first.dispose();
    // float32 accumulation over K terms errs by about sqrt(K) * 2^-24 of the terms' size
    if (!(maxError < 1e-5)) throw new Error(`gemm ${c.M}x${c.K}x${c.N}: result differs from the f64 reference (relative error ${maxError})`);
    const run = () => timeOnce(() => matmul(ta, tb, { transB: c.transB }).dispose());
    run();
    const mine: number[] = [], theirs: number[] = [];
    for (let r = 0; r < reps; r++) {
      if (other) await sleep(PAUSE_MS);
      mine.push(run());
      if (other) {
        await sleep(PAUSE_MS);
        theirs.push(await other());
      }
    }
    return { mine, theirs, maxError };
  } finally {
    ta.dispose();
    tb.dispose();
  }
}

const gflops = (c: GemmCase, s: number) => (2 * c.M * c.N * c.K) / s / 1e9;

/** Runs the GEMM benchmark and prints a table; returns the rows. */
export async function benchGemm(cases: readonly GemmCase[] = DEFAULT_CASES, reps = 15, log: (s: string) => void = console.log): Promise<GemmRow[]> {
  const cpu = getBackend('cpu');
  const isa = cpu instanceof CpuBackend ? `${cpu.isa.current} (best ${cpu.isa.best}), ${cpu.numThreads} threads` : cpu.name;
  log(`finlora cpu GEMM: ${isa}`);
  const worker = await NumpyWorker.start();
  log(typeof worker === 'string' ? `numpy: not measured: ${worker}` : worker.info);
  const rows: GemmRow[] = [];
  const rng = new Rng(1234);
  try {
    for (const c of cases) {
      if (typeof worker !== 'string') await worker.setup(c);
      const t = await timeCase(c, reps, rng, typeof worker === 'string' ? null : () => worker.run());
      rows.push({ ...c, finlora: summarize(t.mine), numpy: t.theirs.length > 0 ? summarize(t.theirs) : null, maxError: t.maxError });
    }
  } finally {
    if (typeof worker !== 'string') worker.close();
  }
  const header = ['M x K x N', 'layout', 'finlora GFLOP/s', 'numpy GFLOP/s', 'ratio', 'finlora median', 'numpy median', 'max rel err'];
  const table = rows.map((r) => [
    `${r.M} x ${r.K} x ${r.N}`,
    r.transB ? 'x @ Wᵀ' : 'a @ b',
    gflops(r, r.finlora.bestS).toFixed(1),
    r.numpy ? gflops(r, r.numpy.bestS).toFixed(1) : '-',
    r.numpy ? (r.numpy.bestS / r.finlora.bestS).toFixed(2) : '-',
    gflops(r, r.finlora.medianS).toFixed(1),
    r.numpy ? gflops(r, r.numpy.medianS).toFixed(1) : '-',
    r.maxError.toExponential(1),
  ]);
  printTable(header, table, 2, log);
  log(`\nbest of ${reps} runs after warm-up, the two libraries taking turns run by run; ratio = finlora / numpy (best runs)`);
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await benchGemm(process.argv[2] === 'train' ? TRAIN_CASES : DEFAULT_CASES);
}
