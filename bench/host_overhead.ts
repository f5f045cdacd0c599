// Host work per training step for FinLoRA's short-sequence shape, measured on the cpu
// backend. On the GPU the step of Llama-3.1-8B with DoRA on q,k,v (batch 8 × 128,
// gradient checkpointing) waits on the host queueing kernels, and that host work — the
// kernel launches and the JS around each — depends on the model's topology, not its
// widths. So this bench keeps the 8B topology (32 layers, 32 query heads over 8
// key/value heads) with tiny widths and counts what the host does per step:
//
//   - kernel launches per step, by kernel (and variant, e.g. binary:add), and in all;
//   - host ms per step: the step's wall time minus the time inside kernels (JS, N-API
//     marshalling, allocation), for forward + backward and for the whole step;
//   - JS ms per step: the same steps again with every native kernel call returning at
//     once (the addon's run entry skipped; allocation and marshalling still run), so the
//     time is the host's alone, without the kernels' noise on a loaded machine.
//
// Rows: gradient checkpointing on (as the trainer runs FinLoRA) and off. The step is
// the GPU bench's (bench/gpu/train.ts): shifted causal-LM loss on the full logits,
// backward, the global gradient norm, AdamW with clipping at 1.0, gradients freed.
// Before timing, the loss of the first step is checked to be finite and near ln(vocab).
//
//   node dist/bench/host_overhead.js                 both rows, bf16 weights
//   options: --f32 (f32 weights), --steps N (timed steps, default 5), --warmup N (default 2),
//            --js-steps N (steps timed with kernels skipped, default twice --steps),
//            --only ckpt|plain, --kernels (list every kernel of each row), --json FILE
//
// Where the JS time goes: node --cpu-prof dist/bench/host_overhead.js --only ckpt --steps 1 --js-steps 40.
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { LoraModel } from '../src/adapters/lora/model.js';
import { backward, noGrad } from '../src/autograd/tape.js';
import { loadCpuAddon } from '../src/backend/cpu/addon.js';
import { CpuBackend } from '../src/backend/cpu/cpu.js';
import { parseLlamaConfig } from '../src/models/llama/config.js';
import { LlamaForCausalLM, type WeightDType } from '../src/models/llama/model.js';
import { causalLmLoss } from '../src/models/loss.js';
import { randn, tensor } from '../src/ops/creation.js';
import { assign, fill } from '../src/ops/inplace.js';
import { AdamW, clipCoefficient, gradNorm } from '../src/train/adamw.js';
import { enableGradientCheckpointing } from '../src/train/grad_checkpoint.js';
import { Rng } from '../src/tensor/rng.js';
import { scope } from '../src/tensor/tensor.js';

/** Llama-3.1-8B's topology with tiny widths. */
export const HOST_SHAPE = { layers: 32, heads: 32, kvHeads: 8, headDim: 8, hidden: 256, intermediate: 512, vocab: 2048, batch: 8, seq: 128, rank: 8, dropout: 0.05 };

export interface HostRow {
  readonly name: string;
  readonly checkpointing: boolean;
  readonly dtype: WeightDType;
  readonly loss: number;
  /** Median over the timed steps. */
  readonly stepMs: number;
  readonly kernelMs: number;
  readonly hostMs: number;
  /** Forward + backward only (what queues kernels on a GPU). */
  readonly fwdBwdMs: number;
  readonly fwdBwdKernelMs: number;
  readonly fwdBwdHostMs: number;
  /** Median wall ms of a step, and of its forward + backward, with kernels skipped. */
  readonly jsStepMs: number;
  /** Median CPU ms (user + system, all threads) of a step with kernels skipped: less sensitive to a loaded machine than wall time. */
  readonly jsStepCpuMs: number;
  readonly jsFwdBwdMs: number;
  readonly launches: number;
  /** Launches per step by kernel name (and variant). */
  readonly byKernel: Readonly<Record<string, number>>;
  /** Kernel ms of the last timed step by kernel name (and variant). */
  readonly kernelMsBy: Readonly<Record<string, number>>;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function buildModel(cpu: CpuBackend, dtype: WeightDType): LlamaForCausalLM {
  const s = HOST_SHAPE;
  const config = parseLlamaConfig({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: s.hidden, intermediate_size: s.intermediate,
    num_hidden_layers: s.layers, num_attention_heads: s.heads, num_key_value_heads: s.kvHeads, head_dim: s.headDim,
    vocab_size: s.vocab, max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: false,
  });
  const model = new LlamaForCausalLM(config, cpu, dtype);
  const rng = new Rng(5);
  for (const [name, p] of model.namedParameters()) {
    p.name = name;
    if (name.endsWith('norm.weight')) fill(p, 1);
    else scope(() => assign(p, randn(p.shape, rng, { std: 0.02, device: cpu })));
  }
  return model;
}

/**
 * Runs one row: warm-up steps, then `steps` timed and profiled ones, then `jsSteps`
 * with the kernels skipped.
 */
export function hostRow(checkpointing: boolean, dtype: WeightDType, steps: number, warmup: number, jsSteps = 2 * steps): HostRow {
  const s = HOST_SHAPE;
  // A backend of its own over the addon, whose kernel calls can be skipped.
  const addon = loadCpuAddon();
  let skipKernels = false;
  const cpu = new CpuBackend({
    alloc: (bytes) => addon.alloc(bytes),
    free: (buf) => addon.free(buf),
    write: (buf, offset, data) => addon.write(buf, offset, data),
    read: (buf, offset, bytes) => addon.read(buf, offset, bytes),
    kernelNames: () => addon.kernelNames(),
    run: (id, buffers, offsets, ints, floats) => {
      if (!skipKernels) addon.run(id, buffers, offsets, ints, floats);
    },
    liveBytes: () => addon.liveBytes(),
    peakBytes: () => addon.peakBytes(),
    resetPeak: () => addon.resetPeak(),
    cachedBytes: () => addon.cachedBytes(),
    emptyCache: () => addon.emptyCache(),
    isa: () => addon.isa(),
    setIsa: (isa) => addon.setIsa(isa),
    numThreads: () => addon.numThreads(),
    setNumThreads: (n) => addon.setNumThreads(n),
  });
  const model = buildModel(cpu, dtype);
  try {
    const lora = LoraModel.inject(model, { r: s.rank, lora_alpha: 16, lora_dropout: s.dropout, target_modules: ['q_proj', 'k_proj', 'v_proj'], use_dora: true }, { seed: 3 });
    if (checkpointing) enableGradientCheckpointing(model, lora.dropout);
    model.train();
    const params = lora.trainableParameters();
    const optimizer = new AdamW(params, { lr: 1e-4, weightDecay: 0 });
    const rng = new Rng(11);
    const ids = tensor(Int32Array.from({ length: s.batch * s.seq }, () => Math.floor(rng.next() * s.vocab)), [s.batch, s.seq], { dtype: 'int32', device: cpu });
    const kernelMs = (): number => cpu.profile().reduce((t, r) => t + r.seconds, 0) * 1e3;
    let fwdBwd = 0, fwdBwdKernel = 0;
    const step = (): number => {
      const loss = scope(() => {
        const k0 = kernelMs();
        const t0 = process.hrtime.bigint();
        const l = causalLmLoss(model.forward(ids), ids);
        backward(l);
        fwdBwd = Number(process.hrtime.bigint() - t0) / 1e6;
        fwdBwdKernel = kernelMs() - k0;
        return l.item();
      });
      const norm = gradNorm(params);
      noGrad(() => optimizer.step(clipCoefficient(norm, 1.0)));
      for (const p of params) {
        p.grad?.dispose();
        p.grad = null;
      }
      return loss;
    };
    cpu.setProfiling(true);
    let loss = NaN;
    try {
      for (let k = 0; k < warmup; k++) {
        loss = step();
        if (k === 0 && !(Math.abs(loss - Math.log(s.vocab)) < 0.5)) throw new Error(`host_overhead: first loss ${loss}, expected about ln(${s.vocab}) = ${Math.log(s.vocab).toFixed(3)}`);
      }
      const wall: number[] = [], inKernels: number[] = [], fb: number[] = [], fbKernels: number[] = [];
      let counts: Map<string, number> | null = null;
      let times = new Map<string, number>();
      for (let k = 0; k < steps; k++) {
        cpu.resetProfile();
        const t0 = process.hrtime.bigint();
        loss = step();
        wall.push(Number(process.hrtime.bigint() - t0) / 1e6);
        const prof = cpu.profile();
        inKernels.push(prof.reduce((t, r) => t + r.seconds, 0) * 1e3);
        fb.push(fwdBwd);
        fbKernels.push(fwdBwdKernel);
        const c = new Map(prof.map((r) => [r.name, r.calls]));
        if (counts !== null && [...c].some(([n, v]) => counts!.get(n) !== v)) throw new Error('host_overhead: kernel counts differ between steps');
        counts = c;
        times = new Map(prof.map((r) => [r.name, r.seconds * 1e3]));
      }
      cpu.setProfiling(false);
      skipKernels = true;
      const jsWall: number[] = [], jsFb: number[] = [], jsCpu: number[] = [];
      for (let k = 0; k < jsSteps; k++) {
        const t0 = process.hrtime.bigint();
        const c0 = process.cpuUsage();
        step();
        const c = process.cpuUsage(c0);
        jsWall.push(Number(process.hrtime.bigint() - t0) / 1e6);
        jsCpu.push((c.user + c.system) / 1e3);
        jsFb.push(fwdBwd);
      }
      skipKernels = false;
      const byKernel = Object.fromEntries([...(counts ?? [])].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])));
      const launches = Object.values(byKernel).reduce((t, n) => t + n, 0);
      const host = wall.map((w, i) => w - inKernels[i]);
      const fbHost = fb.map((w, i) => w - fbKernels[i]);
      return {
        name: `${checkpointing ? 'checkpointed' : 'no checkpointing'}, ${dtype} weights`,
        checkpointing, dtype, loss,
        stepMs: median(wall), kernelMs: median(inKernels), hostMs: median(host),
        fwdBwdMs: median(fb), fwdBwdKernelMs: median(fbKernels), fwdBwdHostMs: median(fbHost),
        jsStepMs: median(jsWall), jsStepCpuMs: median(jsCpu), jsFwdBwdMs: median(jsFb),
        launches, byKernel, kernelMsBy: Object.fromEntries(times),
      };
    } finally {
      cpu.setProfiling(false);
      cpu.resetProfile();
      optimizer.dispose();
      ids.dispose();
    }
  } finally {
    model.dispose();
  }
}

function main(): void {
  const { values } = parseArgs({
    options: {
      f32: { type: 'boolean', default: false },
      steps: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '2' },
      'js-steps': { type: 'string' },
      only: { type: 'string' },
      kernels: { type: 'boolean', default: false },
      json: { type: 'string' },
    },
  });
  const steps = Number(values.steps), warmup = Math.max(1, Number(values.warmup));
  const jsSteps = values['js-steps'] === undefined ? 2 * steps : Number(values['js-steps']);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps must be a positive integer, got ${values.steps}`);
  if (values.only !== undefined && values.only !== 'ckpt' && values.only !== 'plain') throw new Error(`--only must be ckpt or plain, got ${values.only}`);
  const dtype: WeightDType = values.f32 ? 'f32' : 'bf16';
  const s = HOST_SHAPE;
  console.log(`host work per step: Llama ${s.layers} layers, ${s.heads}/${s.kvHeads} heads x ${s.headDim}, hidden ${s.hidden}, intermediate ${s.intermediate}, vocab ${s.vocab}; DoRA r ${s.rank} on q,k,v, dropout ${s.dropout}; batch ${s.batch} x ${s.seq}; cpu backend`);
  const rows: HostRow[] = [];
  for (const ckpt of [true, false]) {
    if (values.only === (ckpt ? 'plain' : 'ckpt')) continue;
    const r = hostRow(ckpt, dtype, steps, warmup, jsSteps);
    rows.push(r);
    console.log(
      `${r.name}: ${r.launches} launches/step; step ${r.stepMs.toFixed(1)} ms (kernels ${r.kernelMs.toFixed(1)}, host ${r.hostMs.toFixed(1)}); ` +
        `forward+backward ${r.fwdBwdMs.toFixed(1)} ms (kernels ${r.fwdBwdKernelMs.toFixed(1)}, host ${r.fwdBwdHostMs.toFixed(1)}, ${((1e3 * r.fwdBwdHostMs) / r.launches).toFixed(2)} us host/launch); ` +
        `kernels skipped: step ${r.jsStepMs.toFixed(1)} ms (CPU ${r.jsStepCpuMs.toFixed(1)} ms, ${((1e3 * r.jsStepCpuMs) / r.launches).toFixed(2)} us/launch), forward+backward ${r.jsFwdBwdMs.toFixed(1)} ms; loss ${r.loss.toFixed(4)}`,
    );
    const list = Object.entries(r.byKernel);
    for (const [name, n] of values.kernels ? list : list.slice(0, 16)) console.log(`    ${name.padEnd(34)} ${String(n).padStart(6)} ${(r.kernelMsBy[name] ?? 0).toFixed(1).padStart(9)} ms`);
    if (!values.kernels && list.length > 16) console.log(`    ... ${list.length - 16} more kernels, ${list.slice(16).reduce((t, [, n]) => t + n, 0)} launches`);
  }
  if (values.json !== undefined) writeFileSync(values.json, `${JSON.stringify(rows, null, 2)}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
