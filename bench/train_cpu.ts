// Training throughput on CPU against PyTorch: one full DoRA training step (forward,
// shifted causal-LM cross-entropy, backward, AdamW) of two Llama shapes, in tokens
// per second, for finlora's cpu backend and for the same model in plain PyTorch
// (bench/train_cpu_torch.py, torch's CPU kernels on two threads) in the same run.
//
//   d 256 / 4 layers / 4 heads / intermediate 688,   batch 8 × 128 tokens
//   d 768 / 12 layers / 12 heads / intermediate 2048, batch 4 × 128 tokens
//   head_dim 64, vocab 32000, f32, DoRA r 8 (lora_alpha 16) on q/k/v, lora_dropout 0.05
//
// Before anything is timed, one training step's loss and every adapter gradient are
// checked against the f64 reference backend on the same weights (fewer tokens, and for
// the d 768 width fewer layers and a smaller vocabulary, so the reference stays quick).
//
// PyTorch runs in one python3 child that answers a request per line, and the two take
// turns step by step (with a pause between turns, so neither side's idle threads are
// still spinning), so both see the same machine load; the ratio compares medians.
// torch is optional (Debian: apt-get install python3-torch, run by /usr/bin/python3);
// without it finlora's numbers are printed alone. Two things about torch's environment
// decide its speed here, and the bench gives it the better of each: its BLAS (Debian's
// torch uses libblas.so.3, the reference BLAS unless libopenblas0 is installed; the
// twin names the library it got) and its allocator (jemalloc without purging when
// libjemalloc2 is installed, FINLORA_TORCH_MALLOC=glibc to use glibc's malloc, which
// returns large blocks to the system and pays page faults for them at every step).
// The torch twin computes DoRA as PEFT
// does, which with dropout runs a second W·x̃ product per adapted layer; finlora
// computes its default (design doc, "DoRA, exactly"), so the row for finlora with
// dropout_semantics 'peft' is printed as well.
//
// FINLORA_PROFILE=1 adds, per shape, one profiled step: the time of each kernel and
// what is left outside kernels (JS, marshalling, allocation).
//
// `node dist/bench/train_cpu.js d256` times one shape (any prefix of its name).
//
// `npm run bench` runs this file; benchTrainCpu() is exported for a wider runner.
import { existsSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { LoraModel } from '../src/adapters/lora/model.js';
import type { DropoutSemantics } from '../src/adapters/lora/config.js';
import { backward, noGrad } from '../src/autograd/tape.js';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu.js';
import { getBackend } from '../src/backend/registry.js';
import { parseLlamaConfig } from '../src/models/llama/config.js';
import { LlamaForCausalLM } from '../src/models/llama/model.js';
import { causalLmLoss } from '../src/models/loss.js';
import { randn, tensor } from '../src/ops/creation.js';
import { assign } from '../src/ops/inplace.js';
import { AdamW } from '../src/train/adamw.js';
import { Rng } from '../src/tensor/rng.js';
import { scope, type Tensor } from '../src/tensor/tensor.js';
import { JsonLineWorker, median, printTable } from './util.js';

export interface TrainShape {
  readonly name: string;
  readonly hidden: number;
  readonly layers: number;
  readonly heads: number;
  readonly intermediate: number;
  readonly vocab: number;
  readonly batch: number;
  readonly seq: number;
  readonly rank: number;
  /** Timed steps per library. */
  readonly reps: number;
}

export const TRAIN_SHAPES: readonly TrainShape[] = [
  { name: 'd256 / 4 layers', hidden: 256, layers: 4, heads: 4, intermediate: 688, vocab: 32000, batch: 8, seq: 128, rank: 8, reps: 9 },
  { name: 'd768 / 12 layers', hidden: 768, layers: 12, heads: 12, intermediate: 2048, vocab: 32000, batch: 4, seq: 128, rank: 8, reps: 3 },
];

const DROPOUT = 0.05;
const JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2';
const PAUSE_MS = 300;
const LR = 1e-4;

/** A Llama of the given shape on `backend`: norms 1, other weights N(0, 0.02²) from `seed`. */
export function buildLlama(s: Pick<TrainShape, 'hidden' | 'intermediate' | 'layers' | 'heads' | 'vocab'>, backend: Backend, seed: number): LlamaForCausalLM {
  const config = parseLlamaConfig({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: s.hidden, intermediate_size: s.intermediate,
    num_hidden_layers: s.layers, num_attention_heads: s.heads, num_key_value_heads: s.heads, vocab_size: s.vocab,
    max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false,
  });
  const model = new LlamaForCausalLM(config, backend);
  const rng = new Rng(seed);
  for (const [name, p] of model.namedParameters()) {
    scope(() => {
      if (name.endsWith('norm.weight')) assign(p, tensor(new Float32Array(p.size).fill(1), p.shape, { device: backend }));
      else assign(p, randn(p.shape, rng, { std: 0.02, device: backend }));
    });
    p.name = name;
  }
  return model;
}

function injectDora(model: LlamaForCausalLM, s: TrainShape, semantics: DropoutSemantics): LoraModel {
  const lora = LoraModel.inject(
    model,
    { r: s.rank, lora_alpha: 16, lora_dropout: DROPOUT, target_modules: ['q_proj', 'k_proj', 'v_proj'], use_dora: true, dropout_semantics: semantics },
    { seed: 3 },
  );
  model.train();
  return lora;
}

function randomIds(s: TrainShape, rows: number, cols: number, backend: Backend): Tensor {
  const rng = new Rng(11);
  return tensor(Int32Array.from({ length: rows * cols }, () => Math.floor(rng.next() * s.vocab)), [rows, cols], { dtype: 'int32', device: backend });
}

// ------------------------------------------------------------------ correctness

interface StepCheck {
  readonly what: string;
  readonly loss: number;
  readonly lossError: number;
  /** Largest |cpu − reference| over every adapter gradient, relative to that gradient's largest |value|. */
  readonly gradError: number;
}

/** Loss and adapter gradients of one step, on cpu and on the f64 reference, for the same weights. */
function checkAgainstReference(s: TrainShape, tokens: number, semantics: DropoutSemantics): StepCheck {
  const run = (backend: Backend): { loss: number; grads: Map<string, Float32Array> } =>
    scope(() => {
      const model = buildLlama(s, backend, 5);
      const lora = injectDora(model, s, semantics);
      // lora_B starts at zero, which would leave lora_A's gradient zero and the DoRA
      // norm equal to ‖W‖; small random values exercise every term.
      const rng = new Rng(9);
      noGrad(() => {
        for (const [name, t] of lora.namedTensors()) {
          if (name.endsWith('lora_B.weight')) scope(() => assign(t, randn(t.shape, rng, { std: 0.02, device: backend })));
        }
      });
      lora.invalidate();
      const ids = randomIds(s, 1, tokens, backend);
      const loss = causalLmLoss(model.forward(ids), ids);
      backward(loss);
      const grads = new Map<string, Float32Array>();
      for (const [name, t] of lora.namedTensors()) {
        if (t.grad === null) throw new Error(`${name}: no gradient`);
        grads.set(name, Float32Array.from(t.grad.toArray()));
      }
      const value = loss.item();
      model.dispose();
      return { loss: value, grads };
    });
  const cpu = run(getBackend('cpu'));
  const ref = run(getBackend('reference'));
  let gradError = 0;
  for (const [name, g] of ref.grads) {
    const c = cpu.grads.get(name)!;
    let scale = 0, diff = 0;
    for (let i = 0; i < g.length; i++) {
      scale = Math.max(scale, Math.abs(g[i]));
      diff = Math.max(diff, Math.abs(g[i] - c[i]));
    }
    gradError = Math.max(gradError, scale > 0 ? diff / scale : diff);
  }
  const what = `${s.hidden}d, ${s.layers} layer${s.layers > 1 ? 's' : ''}, vocab ${s.vocab}, 1 x ${tokens} tokens`;
  return { what, loss: cpu.loss, lossError: Math.abs(cpu.loss - ref.loss) / Math.abs(ref.loss), gradError };
}

// ------------------------------------------------------------------ the torch twin

class TorchWorker {
  private constructor(
    private readonly worker: JsonLineWorker,
    readonly info: string,
  ) {}

  /** Starts the twin under python3 (PYTHON overrides), or returns why it cannot run. */
  static async start(): Promise<TorchWorker | string> {
    const script = new URL('../../bench/train_cpu_torch.py', import.meta.url);
    const python = process.env.PYTHON ?? '/usr/bin/python3';
    const env = { ...process.env };
    // glibc's malloc hands every large tensor back to the system when it is freed, so
    // torch faults its activations in afresh at every step; on this machine a page
    // fault is slow enough that this alone halves torch's speed. jemalloc told never to
    // return memory keeps it, as finlora's caching allocator does.
    const allocator = existsSync(JEMALLOC) && process.env.FINLORA_TORCH_MALLOC !== 'glibc' ? 'jemalloc (no purging)' : 'glibc malloc';
    if (allocator !== 'glibc malloc') {
      env.LD_PRELOAD = [JEMALLOC, env.LD_PRELOAD].filter((x) => x).join(':');
      env.MALLOC_CONF = 'dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true';
    }
    type Hello = { error?: string; torch?: string; python?: string; threads?: number; blas?: string };
    const started = await JsonLineWorker.start<Hello>('torch worker', python, [script.pathname], env, 'inherit');
    if (typeof started === 'string') return started;
    const { worker, hello } = started;
    const blas = hello.blas ?? 'unknown BLAS';
    return new TorchWorker(worker, `torch ${hello.torch} (${hello.python}), ${hello.threads} threads, ${blas}, ${allocator}`);
  }

  private ask(line: string): Promise<{ seconds?: number; loss?: number }> {
    return this.worker.ask<{ seconds?: number; loss?: number }>(line);
  }

  /** Builds the model and runs a warm-up step; returns its loss. */
  async setup(s: TrainShape): Promise<number> {
    const r = await this.ask(`setup ${s.hidden} ${s.layers} ${s.heads} ${s.intermediate} ${s.vocab} ${s.batch} ${s.seq} ${s.rank}`);
    return r.loss ?? NaN;
  }

  async step(): Promise<number> {
    const r = await this.ask('step');
    if (r.seconds === undefined) throw new Error('torch worker: no timing');
    return r.seconds;
  }

  async free(): Promise<void> {
    await this.ask('free');
  }

  close(): void {
    this.worker.close();
  }
}

// ------------------------------------------------------------------ timing

/** One finlora training step as a closure over a model, its adapters and AdamW. */
class FinloraTrainer {
  readonly model: LlamaForCausalLM;
  private readonly lora: LoraModel;
  private readonly optimizer: AdamW;
  private readonly ids: Tensor;

  constructor(readonly shape: TrainShape, semantics: DropoutSemantics) {
    const cpu = getBackend('cpu');
    this.model = buildLlama(shape, cpu, 5);
    this.lora = injectDora(this.model, shape, semantics);
    this.optimizer = new AdamW(this.lora.trainableParameters(), { lr: LR, weightDecay: 0 });
    this.ids = randomIds(shape, shape.batch, shape.seq, cpu);
  }

  /** One step; returns its loss. */
  step(): number {
    const loss = scope(() => {
      const l = causalLmLoss(this.model.forward(this.ids), this.ids);
      backward(l);
      return l.item();
    });
    noGrad(() => this.optimizer.step());
    for (const p of this.optimizer.params) {
      p.grad?.dispose();
      p.grad = null;
    }
    return loss;
  }

  timedStep(): number {
    const t0 = process.hrtime.bigint();
    this.step();
    return Number(process.hrtime.bigint() - t0) / 1e9;
  }

  dispose(): void {
    this.optimizer.dispose();
    this.model.dispose();
    this.ids.dispose();
  }
}

export interface TrainRow {
  readonly shape: TrainShape;
  readonly tokens: number;
  /** Median step seconds. */
  readonly finlora: number;
  readonly finloraPeft: number;
  readonly torch: number | null;
  /** The lowest and highest ratio of one turn (torch step / finlora step). */
  readonly turnRatios: readonly [number, number] | null;
  readonly finloraLoss: number;
  readonly torchLoss: number | null;
}


function printProfile(cpu: CpuBackend, stepSeconds: number, log: (s: string) => void): void {
  const rows = cpu.profile();
  const inKernels = rows.reduce((t, r) => t + r.seconds, 0);
  log(`  profile of one step (${(stepSeconds * 1e3).toFixed(0)} ms; kernels ${(inKernels * 1e3).toFixed(0)} ms, outside kernels ${((stepSeconds - inKernels) * 1e3).toFixed(0)} ms):`);
  // Group matmul shapes under one line each but keep the kernel names apart.
  for (const r of rows.slice(0, 28)) {
    log(`    ${r.name.padEnd(28)} ${String(r.calls).padStart(6)} calls ${(r.seconds * 1e3).toFixed(1).padStart(9)} ms ${((100 * r.seconds) / stepSeconds).toFixed(1).padStart(5)}%`);
  }
  if (rows.length > 28) log(`    ... ${rows.length - 28} more, ${((rows.slice(28).reduce((t, r) => t + r.seconds, 0)) * 1e3).toFixed(1)} ms`);
}

/** Runs the training benchmark and prints a table; returns the rows. */
export async function benchTrainCpu(shapes: readonly TrainShape[] = TRAIN_SHAPES, log: (s: string) => void = console.log): Promise<TrainRow[]> {
  const cpu = getBackend('cpu');
  const profiling = process.env.FINLORA_PROFILE === '1' && cpu instanceof CpuBackend;
  if (cpu instanceof CpuBackend) {
    cpu.setProfiling(false);
    log(`finlora cpu training: ${cpu.isa.current} (best ${cpu.isa.best}), ${cpu.numThreads} threads`);
  }

  for (const [s, tokens] of [[{ ...shapes[0] }, 32], [{ ...(shapes[1] ?? shapes[0]), layers: 2, vocab: 4096 }, 32]] as const) {
    for (const semantics of ['finlora', 'peft'] as const) {
      const c = checkAgainstReference(s, tokens, semantics);
      const ok = c.lossError < 1e-5 && c.gradError < 1e-3;
      log(`check (${semantics} dropout) ${c.what}: loss ${c.loss.toFixed(5)}, relative error ${c.lossError.toExponential(1)}; adapter gradients within ${c.gradError.toExponential(1)} of their largest value${ok ? '' : '  FAILED'}`);
      if (!ok) throw new Error('finlora training step differs from the f64 reference; not timing it');
    }
  }

  const load = () => loadavg().map((x) => x.toFixed(1)).join(' ');
  log(`load average at start: ${load()} (this machine has ${availableParallelism()} cores shared with other work; all numbers move with it)`);
  const worker = await TorchWorker.start();
  log(typeof worker === 'string' ? `PyTorch: not measured: ${worker}` : worker.info);
  const rows: TrainRow[] = [];
  try {
    for (const s of shapes) {
      const tokens = s.batch * s.seq;
      const torchLoss = typeof worker === 'string' ? null : await worker.setup(s);
      const finlora = new FinloraTrainer(s, 'finlora');
      const peft = new FinloraTrainer(s, 'peft');
      try {
        // Warm-up: the first steps fill the caching allocator and the code caches.
        const finloraLoss = finlora.step();
        finlora.step();
        peft.step();
        const mine: number[] = [], minePeft: number[] = [], theirs: number[] = [];
        for (let r = 0; r < s.reps; r++) {
          // A pause before each turn lets the other side's threads stop spinning (OpenMP
          // and OpenBLAS workers busy-wait for a while after their last task).
          await sleep(PAUSE_MS);
          mine.push(finlora.timedStep());
          minePeft.push(peft.timedStep());
          if (typeof worker !== 'string') {
            await sleep(PAUSE_MS);
            theirs.push(await worker.step());
          }
        }
        const turns = theirs.map((t, i) => t / mine[i]);
        rows.push({
          shape: s, tokens, finlora: median(mine), finloraPeft: median(minePeft), torch: theirs.length > 0 ? median(theirs) : null,
          turnRatios: turns.length > 0 ? [Math.min(...turns), Math.max(...turns)] : null, finloraLoss, torchLoss,
        });
        if (profiling) {
          cpu.resetProfile();
          cpu.setProfiling(true);
          const t = finlora.timedStep();
          cpu.setProfiling(false);
          log(`${s.name}:`);
          printProfile(cpu, t, log);
        }
      } finally {
        finlora.dispose();
        peft.dispose();
        if (typeof worker !== 'string') await worker.free();
      }
    }
  } finally {
    if (typeof worker !== 'string') worker.close();
  }

  const header = ['shape', 'tokens/step', 'finlora tok/s', 'finlora (peft dropout) tok/s', 'PyTorch tok/s', 'ratio', 'ratio by turn', 'first loss finlora / torch'];
  const table = rows.map((r) => [
    r.shape.name,
    `${r.shape.batch} x ${r.shape.seq}`,
    (r.tokens / r.finlora).toFixed(0),
    (r.tokens / r.finloraPeft).toFixed(0),
    r.torch !== null ? (r.tokens / r.torch).toFixed(0) : '-',
    r.torch !== null ? `${(r.torch / r.finlora).toFixed(2)}x` : '-',
    r.turnRatios !== null ? `${r.turnRatios[0].toFixed(2)}-${r.turnRatios[1].toFixed(2)}x` : '-',
    `${r.finloraLoss.toFixed(3)} / ${r.torchLoss !== null ? r.torchLoss.toFixed(3) : '-'}`,
  ]);
  printTable(header, table, 1, log);
  log(`\nmedian of ${shapes.map((s) => s.reps).join(' / ')} steps after warm-up, taking turns step by step; a step is forward + loss + backward + AdamW;`);
  log(`load average at the end: ${load()}`);
  log('ratio = finlora / PyTorch tokens per second (of the medians; by turn: the lowest and highest of one turn\'s pair); DoRA r 8 on q/k/v, lora_dropout 0.05, f32');
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  // `node dist/bench/train_cpu.js d256` times only the shapes whose name starts so.
  const only = process.argv[2];
  await benchTrainCpu(only === undefined ? TRAIN_SHAPES : TRAIN_SHAPES.filter((s) => s.name.startsWith(only)));
}
