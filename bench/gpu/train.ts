// Training throughput on the GPU against PEFT: one LoRA / DoRA training step (forward,
// shifted causal-LM loss, backward, gradient clipping, AdamW on the adapter) of
// Llama-3.2-1B and Llama-3.1-8B shaped models with random bf16 weights, in tokens per
// second and peak device memory, for finlora's cuda backend and for transformers + PEFT
// (bench/gpu/train_peft.py) in the same run, row by row.
//
//   rows: {1B, 8B} × {q,k,v ; all linear} × {LoRA dropout 0.05, DoRA dropout 0.05,
//         DoRA dropout 0}, batch 8 × 512 tokens, r 8, lora_alpha 16; plus FinLoRA's
//         sentiment shape (8B, q,k,v, batch 8 × 128, gradient checkpointing, dropout
//         0.05) with DoRA and LoRA.
//
// Each row of each side runs in its own process (so peak memory is the row's own and a
// crash or a time-out loses only that row): finlora as this file with --worker, PEFT as
// python3 train_peft.py. Before finlora's step is timed, its first two warm-up steps
// are checked: the loss finite and near ln(vocab) (random weights predict no token
// better than another), every adapter gradient finite, lora_B's and the magnitudes'
// non-zero at the first step and lora_A's at the second (lora_B starts at zero, so
// lora_A gets no gradient before the first update). A row that fails the check is
// reported as failed, not timed.
//
// The table ends with the targets of the GPU work as pass / FAIL columns: the sentiment
// shape's DoRA at least 3× PEFT's DoRA; 8B q,k,v 8 × 512 DoRA (dropout 0.05) at least
// 2×; all-linear DoRA (dropout 0.05) at least 4×; finlora's DoRA within 10% of its LoRA
// on the same row; finlora's peak below PEFT's.
//
//   node dist/bench/gpu/train.js                    every row (6-8 minutes on an H200, estimated from
//                                                   the quick run's cost per process and PEFT's step times)
//   node dist/bench/gpu/train.js --quick            1B q,k,v rows, fewer steps (59 s on an H200)
//   node dist/bench/gpu/train.js --model 8b --targets qkv --dora --dropout 0.05
//   options: --model 1b|8b, --targets qkv|all, --dora / --lora, --dropout P (repeatable),
//            --sentiment / --no-sentiment / --sentiment-only, --no-peft, --steps N, --warmup N,
//            --row-timeout S, --peft-dropout (finlora with PEFT's DoRA dropout semantics),
//            --json FILE (every result as JSON), --batch B / --seq T (every row), --layers N
//            (finlora alone, N decoder layers), --device cpu (finlora's plumbing without a GPU),
//            --compute f32|bf16 (finlora's activation dtype; default: the model's, bf16 here),
//            --list (print the rows the options select, run nothing), --profile (finlora: 2 more steps
//            after the timed ones with the cuda backend's per-kernel profile; a table of the top
//            kernels' GPU ms per step, their sum against the step's wall time, launches per step)
//   one side of one row: --worker '<row as JSON>' [--device, --layers]
//
// Quantized base (FinLoRA's quant_bits): --quant int8|nf4|bf16 (repeatable; bf16 = the
// unquantized rows) quantizes every decoder Linear on the device after the random fill,
// as finetune does for quant_bits 8 / 4 (src/train/quantize.ts: int8 rows, NF4 with
// double quantization; embeddings and lm_head stay bf16), and names the rows "int8" /
// "nf4". finlora only: PEFT's side needs bitsandbytes, which the benchmark machine lacks.
// --quant-norm dequantize computes DoRA's norm through a dequantized f32 W (the route
// before doraNormQuantized), for comparison.
//
//   node dist/bench/gpu/train.js --sentiment-only --quant int8 --quant nf4 --no-peft
//
// Needs the CUDA addon (npm run build:cuda); PEFT's side needs python3 (PYTHON
// overrides) with torch, transformers and peft.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { LoraModel } from '../../src/adapters/lora/model.js';
import type { FrozenWeight } from '../../src/adapters/lora/layer.js';
import type { DropoutSemantics } from '../../src/adapters/lora/config.js';
import { backward, noGrad } from '../../src/autograd/tape.js';
import type { Backend } from '../../src/backend/backend.js';
import { CudaBackend, type CudaKernelTime } from '../../src/backend/cuda/cuda.js';
import { getBackend } from '../../src/backend/registry.js';
import { parseLlamaConfig } from '../../src/models/llama/config.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { causalLmLoss } from '../../src/models/loss.js';
import { mul } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { fill } from '../../src/ops/inplace.js';
import { sum } from '../../src/ops/reduce.js';
import { AdamW, clipCoefficient, gradNorm } from '../../src/train/adamw.js';
import { enableGradientCheckpointing } from '../../src/train/grad_checkpoint.js';
import { quantizeBase } from '../../src/train/quantize.js';
import { f32ToBf16Bits } from '../../src/tensor/dtype.js';
import type { Linear } from '../../src/nn/linear.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';

// ------------------------------------------------------------------ rows

type ModelName = '1b' | '8b';
type Targets = 'qkv' | 'all';

export interface Row {
  readonly model: ModelName;
  readonly targets: Targets;
  readonly dora: boolean;
  readonly dropout: number;
  readonly batch: number;
  readonly seq: number;
  readonly checkpointing: boolean;
  /** The decoder's Linear weights quantized (quant_bits 8 / 4); absent: bf16. */
  readonly quant?: 'int8' | 'nf4';
  /** DoRA's norm through a dequantized f32 W instead of from the codes (for comparison). */
  readonly dequantizedNorm?: boolean;
}

const VOCAB = 128256;
const TARGET_MODULES: Readonly<Record<Targets, readonly string[]>> = {
  qkv: ['q_proj', 'k_proj', 'v_proj'],
  all: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
};

/** config.json of the two shapes, as Meta's checkpoints ship it (transformers 4.x keys). */
function configJson(model: ModelName, layers?: number): Record<string, unknown> {
  const shape =
    model === '1b'
      ? { hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, head_dim: 64, tie_word_embeddings: true, factor: 32 }
      : { hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, head_dim: 128, tie_word_embeddings: false, factor: 8 };
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: VOCAB, hidden_size: shape.hidden_size,
    intermediate_size: shape.intermediate_size, num_hidden_layers: layers ?? shape.num_hidden_layers, num_attention_heads: 32,
    num_key_value_heads: 8, head_dim: shape.head_dim, max_position_embeddings: 131072, rms_norm_eps: 1e-5,
    rope_theta: 500000, tie_word_embeddings: shape.tie_word_embeddings, bos_token_id: 128000, eos_token_id: 128001,
    rope_scaling: { rope_type: 'llama3', factor: shape.factor, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    torch_dtype: 'bfloat16',
  };
}

export function rowName(r: Row): string {
  const t = r.targets === 'qkv' ? 'q,k,v' : 'all linear';
  const quant = r.quant === undefined ? '' : ` ${r.quant}${r.dequantizedNorm === true ? ' (norm via dequantize)' : ''}`;
  return `${r.model.toUpperCase()} ${t} ${r.dora ? 'DoRA' : 'LoRA'} p${r.dropout} ${r.batch}x${r.seq}${r.checkpointing ? ' ckpt' : ''}${quant}`;
}

const sameShape = (a: Row, b: Row): boolean =>
  a.model === b.model && a.targets === b.targets && a.dropout === b.dropout && a.batch === b.batch && a.seq === b.seq && a.checkpointing === b.checkpointing && a.quant === b.quant;

const isSentiment = (r: Row): boolean => r.model === '8b' && r.targets === 'qkv' && r.batch === 8 && r.seq === 128 && r.checkpointing;

interface GridOptions {
  models: readonly ModelName[];
  targets: readonly Targets[];
  methods: readonly ('lora' | 'dora')[];
  /** Dropouts asked for; null: DoRA at 0.05 and 0, LoRA at 0.05. */
  dropouts: readonly number[] | null;
  /** The sentiment shape's rows after the 8 × 512 grid, or instead of it. */
  sentiment: 'with' | 'without' | 'only';
}

/** The rows to run, in order: the 8 × 512 grid, then the sentiment shape. */
export function grid(o: GridOptions): Row[] {
  const rows: Row[] = [];
  for (const model of o.sentiment === 'only' ? [] : o.models) {
    for (const targets of o.targets) {
      for (const method of ['lora', 'dora'] as const) {
        if (!o.methods.includes(method)) continue;
        const dropouts = o.dropouts ?? (method === 'dora' ? [0.05, 0] : [0.05]);
        for (const dropout of dropouts) rows.push({ model, targets, dora: method === 'dora', dropout, batch: 8, seq: 512, checkpointing: false });
      }
    }
  }
  if (o.sentiment !== 'without' && o.models.includes('8b') && o.targets.includes('qkv')) {
    for (const method of ['dora', 'lora'] as const) {
      if (!o.methods.includes(method)) continue;
      for (const dropout of o.dropouts ?? [0.05]) rows.push({ model: '8b', targets: 'qkv', dora: method === 'dora', dropout, batch: 8, seq: 128, checkpointing: true });
    }
  }
  return rows;
}

// ------------------------------------------------------------------ the finlora side (one row, --worker)

export interface SideResult {
  readonly side: 'finlora' | 'peft';
  readonly tokensPerSecond?: number;
  readonly stepSeconds?: number;
  /** finlora: host seconds per step spent queueing forward and backward. */
  readonly queueSeconds?: number;
  readonly peakBytes?: number;
  readonly cachedBytes?: number;
  readonly loss0?: number;
  readonly lossLast?: number;
  readonly computeDtype?: string;
  readonly buildSeconds?: number;
  readonly error?: string;
  readonly [k: string]: unknown;
}

/** A model whose activation dtype can be read and chosen (the bf16 compute contract). */
interface ComputeDtypeControl {
  readonly computeDtype: 'f32' | 'bf16';
  setComputeDtype(d: 'f32' | 'bf16'): void;
}

function hasComputeDtype(m: object): m is ComputeDtypeControl {
  return typeof Reflect.get(m, 'setComputeDtype') === 'function';
}

/** The largest prime not above n (n small enough for trial division). */
function primeBelow(n: number): number {
  for (let p = n; p > 2; p--) {
    let prime = p % 2 === 1;
    for (let d = 3; prime && d * d <= p; d += 2) if (p % d === 0) prime = false;
    if (prime) return p;
  }
  return 2;
}

/**
 * Fills every weight of `model` with N(0, 0.02²) values in bf16 (norms with 1), as
 * transformers initialises a Llama, without drawing 8e9 numbers: one seeded block of a
 * prime length is drawn once and tiled through each weight from a different start. Its
 * length is prime, so it shares no period with any row length and no two rows of a
 * weight repeat each other; weights of one shape differ by their starts.
 */
function fillRandom(model: LlamaForCausalLM, backend: Backend, seed: number): void {
  const n = primeBelow(1 << 22);
  const rng = new Rng(seed);
  // Twice over, so that any window of n values is one contiguous slice.
  const bits = new Uint16Array(2 * n);
  for (let i = 0; i < n; i++) bits[i] = bits[n + i] = f32ToBf16Bits(rng.normal() * 0.02);
  const bytes = new Uint8Array(bits.buffer);
  let k = 0;
  for (const [name, p] of model.namedParameters()) {
    p.name = name;
    if (name.endsWith('norm.weight')) {
      fill(p, 1);
      continue;
    }
    if (p.dtype !== 'bf16' || !p.isContiguous()) throw new Error(`fillRandom: ${name} is ${p.dtype}${p.isContiguous() ? '' : ' (strided)'}; expected contiguous bf16`);
    let start = (k++ * 1_000_003) % n;
    for (let done = 0; done < p.size; ) {
      const len = Math.min(n - start, p.size - done);
      backend.write(p.storage.buffer, p.byteOffset + 2 * done, bytes.subarray(2 * start, 2 * (start + len)), 'bf16');
      done += len;
      start = 0;
    }
  }
}

/** Σ g² of a gradient (NaN or inf when one of its values is). */
function sumSquares(g: Tensor): number {
  return scope(() => sum(mul(g, g)).item());
}

interface WorkerOptions {
  readonly warmup: number;
  readonly steps: number;
  readonly semantics: DropoutSemantics;
  /** cuda; another backend only to try the plumbing on a machine without a GPU (with few layers and tokens). */
  readonly device: string;
  /** Fewer decoder layers than the real shape (a quick look, or a dry run). */
  readonly layers?: number;
  /** The activation dtype instead of the model's default. */
  readonly compute?: 'f32' | 'bf16';
  /** Profile 2 more steps after the timed ones (cuda only). */
  readonly profile?: boolean;
}

/** --profile: per step, where the GPU's time went, against the step's wall time. */
export interface StepProfile {
  readonly steps: number;
  /** Wall milliseconds per profiled step (the events add a little host time to each launch). */
  readonly wallMs: number;
  /**
   * GPU milliseconds per step between the events around each launch and copy. Where the GPU
   * runs ahead of the host, an interval also holds the wait for its own launch.
   */
  readonly gpuMs: number;
  /** Host milliseconds per step inside the addon's calls (launching, and any wait for the GPU there). */
  readonly hostMs: number;
  readonly launches: number;
  readonly copies: number;
  /** Every label, per step, the most GPU time first. */
  readonly kernels: readonly { name: string; calls: number; ms: number; hostMs: number; tflops?: number }[];
}

const PROFILED_STEPS = 2;

function stepProfile(rows: readonly CudaKernelTime[], steps: number, wallSeconds: number): StepProfile {
  const per = (x: number): number => x / steps;
  const isCopy = (name: string): boolean => name.startsWith('memcpy:');
  return {
    steps,
    wallMs: per(wallSeconds * 1e3),
    gpuMs: per(rows.reduce((t, r) => t + r.seconds, 0) * 1e3),
    hostMs: per(rows.reduce((t, r) => t + r.hostSeconds, 0) * 1e3),
    launches: per(rows.filter((r) => !isCopy(r.name)).reduce((t, r) => t + r.calls, 0)),
    copies: per(rows.filter((r) => isCopy(r.name)).reduce((t, r) => t + r.calls, 0)),
    kernels: rows.map((r) => ({
      name: r.name, calls: per(r.calls), ms: per(r.seconds * 1e3), hostMs: per(r.hostSeconds * 1e3),
      ...(r.flops !== undefined && r.seconds > 0 ? { tflops: r.flops / r.seconds / 1e12 } : {}),
    })),
  };
}

/** The profile as the row's log shows it: the top labels, then the time per kernel (labels of one kernel summed). */
export function profileText(p: StepProfile, top = 15): string {
  const pct = (ms: number): string => (p.gpuMs > 0 ? `${((100 * ms) / p.gpuMs).toFixed(1)}%` : '-');
  const gemms = p.kernels.filter((k) => k.name.startsWith('matmul:'));
  const gemmMs = gemms.reduce((t, k) => t + k.ms, 0);
  const gemmTflop = gemms.reduce((t, k) => t + (k.tflops ?? 0) * k.ms * 1e-3, 0);
  const lines = [
    `profile, per step over ${p.steps} steps: wall ${p.wallMs.toFixed(1)} ms; GPU time in kernels and host copies ${p.gpuMs.toFixed(1)} ms ` +
      `(${((100 * p.gpuMs) / p.wallMs).toFixed(0)}% of wall; outside them, the GPU waiting on the host, ${(p.wallMs - p.gpuMs).toFixed(1)} ms); ` +
      `${p.launches.toFixed(0)} kernel launches and ${p.copies.toFixed(0)} host<->device copies; host time inside the addon's calls ${p.hostMs.toFixed(1)} ms`,
    `GEMMs ${gemmMs.toFixed(1)} ms (${pct(gemmMs)}), ${gemmTflop.toFixed(1)} TFLOP at ${gemmMs > 0 ? (gemmTflop / gemmMs * 1e3).toFixed(0) : '-'} TFLOP/s; everything else ${(p.gpuMs - gemmMs).toFixed(1)} ms`,
    '| kernel | calls/step | GPU ms/step | % of GPU | host ms/step | TFLOP/s |',
    '|---|---|---|---|---|---|',
  ];
  for (const k of p.kernels.slice(0, top)) {
    lines.push(`| ${k.name} | ${k.calls.toFixed(0)} | ${k.ms.toFixed(2)} | ${pct(k.ms)} | ${k.hostMs.toFixed(2)} | ${k.tflops?.toFixed(0) ?? ''} |`);
  }
  const rest = p.kernels.slice(top);
  if (rest.length > 0) {
    const ms = rest.reduce((t, k) => t + k.ms, 0);
    lines.push(`| (${rest.length} more labels) | ${rest.reduce((t, k) => t + k.calls, 0).toFixed(0)} | ${ms.toFixed(2)} | ${pct(ms)} | ${rest.reduce((t, k) => t + k.hostMs, 0).toFixed(2)} | |`);
  }
  const byKernel = new Map<string, { calls: number; ms: number; hostMs: number }>();
  for (const k of p.kernels) {
    const name = k.name.split(':')[0];
    const e = byKernel.get(name) ?? { calls: 0, ms: 0, hostMs: 0 };
    e.calls += k.calls;
    e.ms += k.ms;
    e.hostMs += k.hostMs;
    byKernel.set(name, e);
  }
  lines.push(`by kernel (calls/step, GPU ms/step, host ms/step): ${[...byKernel].sort((a, b) => b[1].ms - a[1].ms)
    .map(([n, e]) => `${n} ${e.calls.toFixed(0)} / ${e.ms.toFixed(1)} (${pct(e.ms)}) / ${e.hostMs.toFixed(1)}`).join('; ')}`);
  return lines.join('\n');
}

/** One row on finlora's cuda backend; throws when the step fails its check. */
function runFinlora(row: Row, o: WorkerOptions, log: (s: string) => void): SideResult {
  const { warmup, steps, semantics } = o;
  const be = getBackend(o.device);
  const cuda = be instanceof CudaBackend ? be : null;
  // The cpu and reference backends run each kernel before returning.
  const sync = (): void => cuda?.syncNow();
  const t0 = process.hrtime.bigint();
  const config = parseLlamaConfig(configJson(row.model, o.layers), `${row.model} config`);
  const model = new LlamaForCausalLM(config, be, 'bf16');
  try {
    model.checkBackend(be, config.architecture);
    fillRandom(model, be, 5);
    // finetune's quant_bits path: the decoder's Linear weights quantized on the device, each dense one freed as it goes.
    const base = row.quant === undefined ? null : quantizeBase(model, row.quant === 'int8' ? 8 : 4);
    if (base !== null) cuda?.emptyCache();
    const frozenWeight = (name: string, target: Linear): FrozenWeight | undefined => {
      const f = base?.frozenWeight(name, target);
      // Without its doraNorm the adapter takes the norm through withDense (a dequantized f32 W).
      return f === undefined || row.dequantizedNorm !== true ? f : { outFeatures: f.outFeatures, inFeatures: f.inFeatures, apply: (x) => f.apply(x), withDense: (fn) => f.withDense(fn) };
    };
    const lora = LoraModel.inject(
      model,
      { r: 8, lora_alpha: 16, lora_dropout: row.dropout, target_modules: [...TARGET_MODULES[row.targets]], use_dora: row.dora, dropout_semantics: semantics },
      { seed: 3, frozenWeight },
    );
    if (row.checkpointing) enableGradientCheckpointing(model, lora.dropout);
    model.train();
    if (o.compute !== undefined) {
      if (hasComputeDtype(model)) model.setComputeDtype(o.compute);
      else if (o.compute !== 'f32') throw new Error('--compute bf16: this build computes in f32 only');
    }
    const computeDtype = hasComputeDtype(model) ? model.computeDtype : 'f32 (this build has no bf16 compute)';
    const named = [...lora.namedTensors()];
    const params = named.map(([, t]) => t);
    const optimizer = new AdamW(params, { lr: 1e-4, weightDecay: 0 });
    const rng = new Rng(11);
    const ids = tensor(Int32Array.from({ length: row.batch * row.seq }, () => Math.floor(rng.next() * VOCAB)), [row.batch, row.seq], { dtype: 'int32', device: be });
    sync();
    const buildSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    log(`finlora ${rowName(row)}${o.layers !== undefined ? ` (${o.layers} layers)` : ''}: built in ${buildSeconds.toFixed(1)} s, compute ${computeDtype}, ${lora.summary()}`);
    cuda?.resetPeak();

    // The trainer's step (src/train/trainer.ts) for one micro-batch: the loss read
    // back, the global gradient norm read back for clipping at 1.0, AdamW, grads freed.
    // Host time spent queueing forward and backward (until backward returns, before the
    // loss is read): near the step time means the GPU waits on the host.
    let queueSeconds = 0;
    const step = (inspect?: (k: number) => void, k = 0): number => {
      const loss = scope(() => {
        const q0 = process.hrtime.bigint();
        const l = causalLmLoss(model.forward(ids), ids);
        backward(l);
        queueSeconds += Number(process.hrtime.bigint() - q0) / 1e9;
        return l.item();
      });
      const norm = gradNorm(params);
      inspect?.(k);
      noGrad(() => optimizer.step(clipCoefficient(norm, 1.0)));
      for (const p of params) {
        p.grad?.dispose();
        p.grad = null;
      }
      return loss;
    };

    const lnV = Math.log(VOCAB);
    const checkGrads = (k: number): void => {
      for (const [name, p] of named) {
        if (p.grad === null) throw new Error(`check: ${name} got no gradient at step ${k + 1}`);
        const s = sumSquares(p.grad);
        if (!Number.isFinite(s)) throw new Error(`check: ${name}'s gradient is not finite at step ${k + 1} (sum of squares ${s})`);
        // lora_B starts at zero, so lora_A's gradient (s·Bᵀ·dY·xᵀ) is zero until the first update.
        const mustMove = k > 0 || !name.endsWith('lora_A.weight');
        if (mustMove && s === 0) throw new Error(`check: ${name}'s gradient is zero at step ${k + 1}`);
      }
    };
    const losses: number[] = [];
    for (let k = 0; k < Math.max(2, warmup); k++) {
      const loss = step(k < 2 ? checkGrads : undefined, k);
      losses.push(loss);
      if (k === 0 && !(Math.abs(loss - lnV) < 2)) throw new Error(`check: the first loss is ${loss}, expected near ln(${VOCAB}) = ${lnV.toFixed(3)} for random weights`);
    }
    log(`finlora ${rowName(row)}: check passed (first loss ${losses[0].toFixed(4)}, ln V ${lnV.toFixed(4)}; adapter gradients finite and non-zero)`);
    sync();
    const t1 = process.hrtime.bigint();
    queueSeconds = 0;
    let last = NaN;
    for (let k = 0; k < steps; k++) last = step();
    sync();
    const seconds = Number(process.hrtime.bigint() - t1) / 1e9 / steps;
    // Read before the profiled steps add to it.
    const queuePerStep = queueSeconds / steps;
    let profile: StepProfile | undefined;
    if (o.profile === true && cuda !== null) {
      cuda.resetProfile();
      cuda.setProfiling(true);
      const tp = process.hrtime.bigint();
      try {
        for (let k = 0; k < PROFILED_STEPS; k++) step();
        sync();
      } finally {
        cuda.setProfiling(false);
      }
      profile = stepProfile(cuda.profile(), PROFILED_STEPS, Number(process.hrtime.bigint() - tp) / 1e9);
      cuda.resetProfile();
      log(`finlora ${rowName(row)}: ${profileText(profile)}`);
    } else if (o.profile === true) {
      log(`finlora ${rowName(row)}: --profile needs the cuda backend (this is ${be.name})`);
    }
    const result: SideResult = {
      side: 'finlora',
      tokensPerSecond: (row.batch * row.seq) / seconds,
      stepSeconds: seconds,
      queueSeconds: queuePerStep,
      steps,
      warmup: Math.max(2, warmup),
      peakBytes: cuda?.peakBytes(),
      cachedBytes: cuda?.cachedBytes(),
      loss0: losses[0],
      lossLast: last,
      lnVocab: lnV,
      computeDtype,
      dropoutSemantics: semantics,
      buildSeconds,
      device: cuda?.device.name ?? be.name,
      layers: config.numHiddenLayers,
      ...(profile !== undefined ? { profile } : {}),
    };
    optimizer.dispose();
    ids.dispose();
    return result;
  } finally {
    model.dispose();
  }
}

// ------------------------------------------------------------------ the runner

interface Outcome {
  readonly row: Row;
  readonly finlora: SideResult;
  readonly peft: SideResult | null;
}

/** Runs a command with a time limit; the last JSON line of its stdout is its result. */
function runChild(cmd: string, args: readonly string[], side: 'finlora' | 'peft', timeoutSeconds: number, log: (s: string) => void): Promise<SideResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutSeconds * 1000);
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      // Progress and warnings, passed through as they come.
      for (const line of d.toString().split('\n')) if (line.trim() !== '') log(`  [${side}] ${line}`);
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      resolve({ side, error: `${cmd} could not be started (${e.message})` });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const lines = out.split('\n').filter((l) => l.trim().startsWith('{'));
      let parsed: SideResult | null = null;
      if (lines.length > 0) {
        try {
          parsed = JSON.parse(lines[lines.length - 1]) as SideResult;
        } catch {
          parsed = null;
        }
      }
      if (timedOut) resolve({ side, error: `timed out after ${timeoutSeconds} s` });
      else if (parsed !== null) resolve(parsed);
      else {
        const tail = err.trim().split('\n').slice(-1)[0] ?? '';
        resolve({ side, error: `exited with ${signal ?? `code ${code}`}${tail !== '' ? `: ${tail}` : ''}` });
      }
    });
  });
}

/** The worker's command line: the row, and the flags it shares with the runner. */
function workerArgs(row: Row, warmup: number, steps: number, values: Flags): string[] {
  const pass = (flag: 'layers' | 'device' | 'compute'): string[] => (values[flag] !== undefined ? [`--${flag}`, String(values[flag])] : []);
  return [
    fileURLToPath(import.meta.url), '--worker', JSON.stringify(row), '--warmup', String(warmup), '--steps', String(steps),
    ...(values['peft-dropout'] === true ? ['--peft-dropout'] : []), ...pass('layers'), ...pass('device'), ...pass('compute'),
    ...(values.profile === true ? ['--profile'] : []),
  ];
}

function peftArgs(row: Row, warmup: number, steps: number): string[] {
  const script = fileURLToPath(new URL('../../../bench/gpu/train_peft.py', import.meta.url));
  return [
    script, '--model', row.model, '--targets', row.targets, ...(row.dora ? ['--dora'] : []), '--dropout', String(row.dropout),
    '--batch', String(row.batch), '--seq', String(row.seq), ...(row.checkpointing ? ['--checkpointing'] : []),
    '--warmup', String(warmup), '--steps', String(steps),
  ];
}

const GiB = 2 ** 30;
const fmtRate = (x: number | undefined): string => (x === undefined ? '-' : x >= 10000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0));
const fmtGiB = (x: number | undefined): string => (x === undefined ? '-' : (x / GiB).toFixed(1));

/** The ratio target of a row (finlora DoRA over PEFT DoRA), if the issue sets one. */
function ratioTarget(r: Row): number | null {
  if (!r.dora || r.dropout !== 0.05) return null;
  if (isSentiment(r)) return 3;
  if (r.batch !== 8 || r.seq !== 512 || r.checkpointing) return null;
  if (r.targets === 'all') return 4;
  if (r.model === '8b') return 2;
  return null;
}

/** The markdown table of the outcomes, with the targets as pass / FAIL columns; returns it and whether every checked target passed. */
export function table(outcomes: readonly Outcome[]): { text: string; failed: number } {
  let failed = 0;
  const mark = (ok: boolean | null, what: string): string => {
    if (ok === null) return '-';
    if (!ok) failed++;
    return ok ? `pass (${what})` : `FAIL (${what})`;
  };
  const header = ['row', 'finlora tok/s', 'PEFT tok/s', 'ratio', 'finlora peak GiB', 'PEFT peak GiB', 'first loss finlora / PEFT', 'ratio target', 'DoRA vs own LoRA (≥ 0.9)', 'peak < PEFT'];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const o of outcomes) {
    const f = o.finlora, p = o.peft;
    const fr = f.tokensPerSecond, pr = p?.tokensPerSecond;
    const ratio = fr !== undefined && pr !== undefined ? fr / pr : undefined;
    const want = ratioTarget(o.row);
    const lora = o.row.dora ? outcomes.find((x) => !x.row.dora && sameShape(x.row, o.row)) : undefined;
    const lr = lora?.finlora.tokensPerSecond;
    const vsLora = fr !== undefined && lr !== undefined ? fr / lr : undefined;
    const cells = [
      rowName(o.row),
      f.error !== undefined ? `error: ${f.error}` : fmtRate(fr),
      p === null ? (o.row.quant !== undefined ? 'not run (needs bitsandbytes)' : 'not run') : p.error !== undefined ? `error: ${p.error}` : fmtRate(pr),
      ratio === undefined ? '-' : `${ratio.toFixed(2)}x`,
      fmtGiB(f.peakBytes),
      fmtGiB(p?.peakBytes),
      `${f.loss0?.toFixed(3) ?? '-'} / ${p?.loss0?.toFixed(3) ?? '-'}`,
      // A finlora failure fails the target; without a PEFT figure there is nothing to compare.
      want === null ? '-' : f.error !== undefined ? mark(false, `≥ ${want}x`) : ratio === undefined ? 'no PEFT figure' : mark(ratio >= want, `≥ ${want}x`),
      vsLora === undefined ? '-' : mark(vsLora >= 0.9, `${vsLora.toFixed(2)}`),
      f.peakBytes === undefined || p === null || p.peakBytes === undefined ? '-' : mark(f.peakBytes < p.peakBytes, `${fmtGiB(f.peakBytes)} vs ${fmtGiB(p.peakBytes)}`),
    ];
    lines.push(`| ${cells.map((c) => c.replace(/\|/g, '/')).join(' | ')} |`);
  }
  return { text: lines.join('\n'), failed };
}

async function runner(values: Flags, log: (s: string) => void): Promise<number> {
  const quick = values.quick === true;
  const models = (values.model ?? (quick ? ['1b'] : ['1b', '8b'])).map(parseModel);
  const targets = (values.targets ?? (quick ? ['qkv'] : ['qkv', 'all'])).map(parseTargets);
  const methods: ('lora' | 'dora')[] = values.dora === true || values.lora === true ? [...(values.lora ? ['lora' as const] : []), ...(values.dora ? ['dora' as const] : [])] : ['lora', 'dora'];
  const dropouts = values.dropout === undefined ? null : values.dropout.map(parseDropout);
  const sentiment = values['sentiment-only'] === true ? 'only' : values['no-sentiment'] === true ? 'without' : values.sentiment === true || !quick ? 'with' : 'without';
  // At least 2 on both sides: finlora's check spans the first two steps.
  const warmup = Math.max(2, positive(values.warmup ?? (quick ? '2' : '3'), '--warmup'));
  const steps = positive(values.steps ?? (quick ? '5' : '10'), '--steps');
  const rowTimeout = positive(values['row-timeout'] ?? '150', '--row-timeout');
  const layers = values.layers === undefined ? undefined : positive(values.layers, '--layers');
  if (values.compute !== undefined) parseCompute(values.compute);
  // PEFT's model cannot be cut to fewer layers from here, so a shortened run is finlora's alone.
  const withPeft = values['no-peft'] !== true && layers === undefined;
  const python = process.env.PYTHON ?? 'python3';
  const batch = values.batch === undefined ? undefined : positive(values.batch, '--batch');
  const seq = values.seq === undefined ? undefined : positive(values.seq, '--seq');
  const quants = (values.quant ?? ['bf16']).map(parseQuant);
  const dequantizedNorm = values['quant-norm'] === undefined ? false : parseQuantNorm(values['quant-norm']);
  const rows = grid({ models, targets, methods, dropouts, sentiment }).flatMap((r) =>
    quants.map((q): Row => ({ ...r, batch: batch ?? r.batch, seq: seq ?? r.seq, ...(q === 'bf16' ? {} : { quant: q, ...(dequantizedNorm && r.dora ? { dequantizedNorm } : {}) }) })),
  );
  if (rows.length === 0) throw new Error('no row matches the options');
  if (values.list === true) {
    for (const r of rows) console.log(rowName(r));
    return 0;
  }
  log(`${rows.length} rows, ${warmup} warm-up + ${steps} timed steps each, ${rowTimeout} s per side per row${withPeft ? `; PEFT through ${python}` : '; finlora only'}`);

  const outcomes: Outcome[] = [];
  const started = process.hrtime.bigint();
  for (const row of rows) {
    log(`-- ${rowName(row)}`);
    const finlora = await runChild(process.execPath, workerArgs(row, warmup, steps, values), 'finlora', rowTimeout, log);
    // PEFT's quantized side needs bitsandbytes.
    const peft = withPeft && row.quant === undefined ? await runChild(python, peftArgs(row, warmup, steps), 'peft', rowTimeout, log) : null;
    const show = (r: SideResult) => (r.error !== undefined ? `error: ${r.error}` : `${fmtRate(r.tokensPerSecond)} tok/s, peak ${fmtGiB(r.peakBytes)} GiB, first loss ${r.loss0?.toFixed(4)}${r.queueSeconds !== undefined && r.stepSeconds !== undefined ? `, step ${(r.stepSeconds * 1e3).toFixed(1)} ms of which ${(r.queueSeconds * 1e3).toFixed(1)} ms queueing fwd+bwd on the host` : ''}`);
    log(`   finlora: ${show(finlora)}${peft !== null ? `\n   PEFT:    ${show(peft)}` : ''}`);
    outcomes.push({ row, finlora, peft });
  }
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  const { text, failed } = table(outcomes);
  const first = outcomes.find((o) => o.finlora.device !== undefined)?.finlora;
  const versions = outcomes.find((o) => o.peft?.versions !== undefined)?.peft?.versions;
  console.log('');
  console.log(text);
  console.log('');
  console.log(`${first?.device ?? 'device unknown'}; finlora compute ${first?.computeDtype ?? '?'}; PEFT ${versions !== undefined ? JSON.stringify(versions) : 'not run'}`);
  console.log(`bf16 base weights (int8 / nf4 rows: the decoder's Linear weights quantized, embeddings and lm_head bf16), r 8, lora_alpha 16; a step is forward + loss + backward + clip + AdamW; tok/s over ${steps} steps after ${warmup} warm-up; peak = most device bytes allocated during the steps (weights included); ${elapsed.toFixed(0)} s in all`);
  if (values.json !== undefined) writeFileSync(values.json, `${JSON.stringify(outcomes, null, 2)}\n`);
  return failed;
}

// ------------------------------------------------------------------ command line

interface Flags {
  worker?: string;
  quick?: boolean;
  model?: string[];
  targets?: string[];
  dora?: boolean;
  lora?: boolean;
  dropout?: string[];
  sentiment?: boolean;
  'no-sentiment'?: boolean;
  'sentiment-only'?: boolean;
  list?: boolean;
  'no-peft'?: boolean;
  'peft-dropout'?: boolean;
  steps?: string;
  warmup?: string;
  'row-timeout'?: string;
  json?: string;
  layers?: string;
  device?: string;
  batch?: string;
  seq?: string;
  compute?: string;
  quant?: string[];
  'quant-norm'?: string;
  profile?: boolean;
}

function parseModel(s: string): ModelName {
  const m = s.toLowerCase();
  if (m !== '1b' && m !== '8b') throw new Error(`--model must be 1b or 8b, got '${s}'`);
  return m;
}

function parseTargets(s: string): Targets {
  const t = s.toLowerCase().replace(/[^a-z]/g, '');
  if (t === 'qkv') return 'qkv';
  if (t === 'all' || t === 'alllinear') return 'all';
  throw new Error(`--targets must be qkv or all, got '${s}'`);
}

function parseDropout(s: string): number {
  const p = Number(s);
  if (!(p >= 0 && p < 1)) throw new Error(`--dropout must be in [0, 1), got '${s}'`);
  return p;
}

function parseCompute(s: string): 'f32' | 'bf16' {
  if (s !== 'f32' && s !== 'bf16') throw new Error(`--compute must be f32 or bf16, got '${s}'`);
  return s;
}

function parseQuant(s: string): 'bf16' | 'int8' | 'nf4' {
  if (s !== 'bf16' && s !== 'int8' && s !== 'nf4') throw new Error(`--quant must be int8, nf4 or bf16, got '${s}'`);
  return s;
}

function parseQuantNorm(s: string): boolean {
  if (s === 'dequantize') return true;
  if (s === 'codes') return false;
  throw new Error(`--quant-norm must be codes or dequantize, got '${s}'`);
}

function positive(s: string, flag: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got '${s}'`);
  return n;
}

function isRow(v: unknown): v is Row {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return (r.model === '1b' || r.model === '8b') && (r.targets === 'qkv' || r.targets === 'all') && typeof r.dora === 'boolean' && typeof r.dropout === 'number' &&
    typeof r.batch === 'number' && typeof r.seq === 'number' && typeof r.checkpointing === 'boolean' &&
    (r.quant === undefined || r.quant === 'int8' || r.quant === 'nf4') && (r.dequantizedNorm === undefined || typeof r.dequantizedNorm === 'boolean');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      worker: { type: 'string' }, quick: { type: 'boolean' }, model: { type: 'string', multiple: true }, targets: { type: 'string', multiple: true },
      dora: { type: 'boolean' }, lora: { type: 'boolean' }, dropout: { type: 'string', multiple: true }, sentiment: { type: 'boolean' },
      'no-sentiment': { type: 'boolean' }, 'sentiment-only': { type: 'boolean' }, list: { type: 'boolean' }, 'no-peft': { type: 'boolean' }, 'peft-dropout': { type: 'boolean' }, steps: { type: 'string' },
      warmup: { type: 'string' }, 'row-timeout': { type: 'string' }, json: { type: 'string' },
      layers: { type: 'string' }, device: { type: 'string' }, batch: { type: 'string' }, seq: { type: 'string' },
      compute: { type: 'string' }, quant: { type: 'string', multiple: true }, 'quant-norm': { type: 'string' },
      profile: { type: 'boolean' },
    },
  });
  const log = (s: string) => console.error(s);
  if (values.worker !== undefined) {
    const row: unknown = JSON.parse(values.worker);
    if (!isRow(row)) throw new Error(`--worker: not a row: ${values.worker}`);
    let result: SideResult;
    try {
      result = runFinlora(
        row,
        {
          warmup: positive(values.warmup ?? '3', '--warmup'), steps: positive(values.steps ?? '10', '--steps'), semantics: values['peft-dropout'] ? 'peft' : 'finlora',
          device: values.device ?? 'cuda', ...(values.layers !== undefined ? { layers: positive(values.layers, '--layers') } : {}),
          ...(values.compute !== undefined ? { compute: parseCompute(values.compute) } : {}),
          profile: values.profile === true,
        },
        log,
      );
    } catch (e) {
      result = { side: 'finlora', error: e instanceof Error ? e.message : String(e) };
      if (e instanceof Error && e.stack !== undefined) log(e.stack);
    }
    console.log(JSON.stringify(result));
    process.exitCode = result.error === undefined ? 0 : 1;
    return;
  }
  const failed = await runner(values, log);
  if (failed > 0) console.log(`${failed} target check(s) failed`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    await main();
  } catch (e) {
    console.error(`bench/gpu/train: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 2;
  }
}
