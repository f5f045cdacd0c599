// Memory and quality of a quantized frozen base, against the same model in f32 and bf16:
// base-weight bytes per parameter, the peak native memory of a DoRA training step
// (r 8 on q, k, v; AdamW; with and without gradient checkpointing), its time, and the
// logit deviation and loss change against the f32 model on the same tokens.
//
// Every base holds the same values: each weight is drawn from its own seeded generator
// (norms 1, the rest N(0, 0.02²) as transformers initialises), then stored in f32 or
// bf16, or quantized (int8 rows; NF4 with double quantization) with the Linear layers
// other than lm_head quantized and embeddings, norms and lm_head in `rest` (bf16 by
// default, as transformers keeps them in torch_dtype). Peak memory is the CPU backend's
// high-water mark of live native bytes (peakBytes), base weights included; what the
// base holds is checked against what the backend holds before anything is reported.
//
//   node dist/bench/quant_memory.js [--hidden 1024 --layers 8 --vocab 8192 ...] [--rest bf16|f32]
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { LoraModel } from '../src/adapters/lora/model.js';
import { backward, noGrad } from '../src/autograd/tape.js';
import { loadCpuAddon } from '../src/backend/cpu/addon.js';
import { getBackend } from '../src/backend/registry.js';
import { parseLlamaConfig } from '../src/models/llama/config.js';
import { LlamaForCausalLM, type WeightDType } from '../src/models/llama/model.js';
import { causalLmLoss } from '../src/models/loss.js';
import { Linear } from '../src/nn/linear.js';
import { full, randn, tensor } from '../src/ops/creation.js';
import { assign } from '../src/ops/inplace.js';
import { keptInFullPrecision } from '../src/quant/load.js';
import { type QuantFormat, quantizeWeight } from '../src/quant/weight.js';
import { AdamW } from '../src/train/adamw.js';
import { enableGradientCheckpointing } from '../src/train/grad_checkpoint.js';
import { DTYPE_BYTES } from '../src/tensor/dtype.js';
import { Rng } from '../src/tensor/rng.js';
import { scope, type Tensor } from '../src/tensor/tensor.js';
import type { LlamaShape } from './util.js';

export interface MemoryShape extends LlamaShape {
  readonly batch: number;
  readonly seq: number;
}

export type BaseFormat = 'f32' | 'bf16' | QuantFormat;

export interface MemoryRow {
  readonly base: BaseFormat;
  /** Every base weight: bytes the backend holds for them, and their values. */
  readonly baseBytes: number;
  readonly baseParams: number;
  /** The Linear layers but lm_head (the ones quantized). */
  readonly linearBytes: number;
  readonly linearParams: number;
  /** Peak live native bytes during one training step (base included), without and with gradient checkpointing. */
  readonly stepPeak: number;
  readonly stepPeakCheckpointed: number;
  /** Seconds of one step (checkpointing off, after a warm-up step). */
  readonly stepSeconds: number;
  /** Eval-mode logits of the base (no adapter) on the batch, and their loss. */
  readonly logits: Float32Array;
  readonly loss: number;
}

const cpu = getBackend('cpu');

function configFor(s: MemoryShape) {
  return parseLlamaConfig({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: s.hidden, intermediate_size: s.intermediate,
    num_hidden_layers: s.layers, num_attention_heads: s.heads, num_key_value_heads: s.kvHeads, vocab_size: s.vocab,
    max_position_embeddings: 4096, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false,
  });
}

/** The model with every base in the same values: weight i drawn from Rng(1000 + i), then stored as `base` asks. */
function buildBase(s: MemoryShape, base: BaseFormat, rest: WeightDType): LlamaForCausalLM {
  const format = base === 'int8' || base === 'nf4' ? base : null;
  const dtype: WeightDType = format === null ? (base === 'bf16' ? 'bf16' : 'f32') : rest;
  const model = new LlamaForCausalLM(configFor(s), cpu, dtype, format === null ? undefined : (m) => !keptInFullPrecision(m));
  const linears = new Map([...model.namedModules()].filter((e): e is [string, Linear] => e[1] instanceof Linear).map(([n, m]) => [`${n}.weight`, m]));
  [...model.namedParameters()].forEach(([name, p], i) => {
    scope(() => {
      if (name.endsWith('norm.weight')) return assign(p, full(p.shape, 1, { device: cpu }));
      const w = randn(p.shape, new Rng(1000 + i), { std: 0.02, device: cpu });
      const linear = linears.get(name);
      if (format !== null && linear !== undefined && !keptInFullPrecision(name.slice(0, -'.weight'.length))) linear.setQuantizedWeight(quantizeWeight(w, format));
      else assign(p, w);
    });
  });
  return model;
}

function baseBytes(model: LlamaForCausalLM): Pick<MemoryRow, 'baseBytes' | 'baseParams' | 'linearBytes' | 'linearParams'> {
  let baseB = 0, baseP = 0, linB = 0, linP = 0;
  const modules = new Map([...model.namedModules()].filter((e): e is [string, Linear] => e[1] instanceof Linear));
  const quantized = new Set<Tensor>();
  for (const [name, m] of modules) {
    if (keptInFullPrecision(name)) continue;
    const q = m.quantized;
    const bytes = q === null ? m.weight.size * DTYPE_BYTES[m.weight.dtype] : q.bytes;
    linB += bytes;
    linP += m.weight.size;
    if (q !== null) quantized.add(m.weight);
  }
  for (const [, t] of model.namedParameters()) {
    baseP += t.size;
    // A quantized Linear's `weight` is a one-value placeholder; its quantized tensors count instead.
    baseB += quantized.has(t) ? 0 : t.size * DTYPE_BYTES[t.dtype];
  }
  for (const [, m] of modules) if (m.quantized !== null) baseB += m.quantized.bytes;
  return { baseBytes: baseB, baseParams: baseP, linearBytes: linB, linearParams: linP };
}

function batchIds(s: MemoryShape): Tensor {
  const rng = new Rng(7);
  return tensor(Int32Array.from({ length: s.batch * s.seq }, () => rng.int(s.vocab)), [s.batch, s.seq], { dtype: 'int32', device: cpu });
}

/** Builds the base, checks its bytes against the backend, scores it, then trains DoRA on it for three steps. */
export function measureBase(s: MemoryShape, base: BaseFormat, rest: WeightDType = 'bf16'): MemoryRow {
  const addon = loadCpuAddon();
  const ids = batchIds(s);
  const before = cpu.liveBytes();
  const model = buildBase(s, base, rest);
  try {
    const bytes = baseBytes(model);
    const placeholders = [...model.namedModules()].filter(([, m]) => m instanceof Linear && m.quantized !== null).length * 4;
    const held = cpu.liveBytes() - before;
    if (held !== bytes.baseBytes + placeholders) throw new Error(`${base}: the backend holds ${held} bytes for the base, the count says ${bytes.baseBytes} + ${placeholders}`);
    const { logits, loss } = noGrad(() => scope(() => {
      const l = model.forward(ids);
      return { logits: Float32Array.from(l.toArray()), loss: causalLmLoss(l, ids).item() };
    }));

    const lm = LoraModel.inject(model, { r: 8, lora_alpha: 16, lora_dropout: 0.05, target_modules: ['q_proj', 'k_proj', 'v_proj'], use_dora: true }, { seed: 0 });
    const params = lm.trainableParameters();
    const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0 });
    model.train();
    const step = (): void => {
      scope(() => {
        backward(causalLmLoss(model.forward(ids), ids));
        opt.step();
        for (const p of params) {
          p.grad?.dispose();
          p.grad = null;
        }
      });
    };
    try {
      step(); // warm-up: the optimizer's first use, the allocator's first blocks
      addon.resetPeak();
      const t0 = process.hrtime.bigint();
      step();
      const stepSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const stepPeak = addon.peakBytes() - before;
      const undo = enableGradientCheckpointing(model, lm.dropout);
      addon.resetPeak();
      step();
      const stepPeakCheckpointed = addon.peakBytes() - before;
      undo();
      return { base, ...bytes, stepPeak, stepPeakCheckpointed, stepSeconds, logits, loss };
    } finally {
      params.forEach((_, i) => {
        opt.stateOf(i).expAvg.dispose();
        opt.stateOf(i).expAvgSq.dispose();
      });
      lm.unload();
    }
  } finally {
    model.dispose();
    ids.dispose();
    loadCpuAddon().emptyCache();
  }
}

/** Relative RMS and largest absolute difference of `a` against `ref`. */
export function deviation(a: Float32Array, ref: Float32Array): { relRms: number; maxAbs: number } {
  let d2 = 0, r2 = 0, maxAbs = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - ref[i];
    d2 += d * d;
    r2 += ref[i] * ref[i];
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  return { relRms: Math.sqrt(d2 / Math.max(r2, 1e-300)), maxAbs };
}

const MiB = 2 ** 20;

function main(): void {
  const { values } = parseArgs({
    options: {
      hidden: { type: 'string', default: '1024' }, intermediate: { type: 'string', default: '2816' }, layers: { type: 'string', default: '8' },
      heads: { type: 'string', default: '16' }, 'kv-heads': { type: 'string', default: '8' }, vocab: { type: 'string', default: '8192' },
      batch: { type: 'string', default: '2' }, seq: { type: 'string', default: '64' }, rest: { type: 'string', default: 'bf16' },
    },
  });
  const n = (k: keyof typeof values) => Number(values[k]);
  const shape: MemoryShape = { hidden: n('hidden'), intermediate: n('intermediate'), layers: n('layers'), heads: n('heads'), kvHeads: n('kv-heads'), vocab: n('vocab'), batch: n('batch'), seq: n('seq') };
  const rest = values.rest === 'f32' ? 'f32' : 'bf16';
  console.log(`Llama hidden ${shape.hidden}, intermediate ${shape.intermediate}, ${shape.layers} layers, ${shape.heads}/${shape.kvHeads} heads, vocab ${shape.vocab}; ` +
    `DoRA r 8 on q,k,v, batch ${shape.batch} x ${shape.seq} tokens; quantized bases keep embeddings, norms and lm_head in ${rest}; ${loadCpuAddon().isa().current}, ${loadCpuAddon().numThreads()} threads\n`);
  const rows = (['f32', 'bf16', 'int8', 'nf4'] as const).map((b) => measureBase(shape, b, rest));
  const ref = rows[0];
  console.log('| base | bytes/param, quantized Linears | bytes/param, whole base | base weights MiB | step peak MiB | step peak MiB, checkpointing | step s | logit rel. RMS vs f32 | max abs Δlogit | loss (Δ vs f32) |');
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const dev = deviation(r.logits, ref.logits);
    console.log(
      `| ${r.base} | ${(r.linearBytes / r.linearParams).toFixed(3)} | ${(r.baseBytes / r.baseParams).toFixed(3)} | ${(r.baseBytes / MiB).toFixed(1)} | ${(r.stepPeak / MiB).toFixed(1)} | ${(r.stepPeakCheckpointed / MiB).toFixed(1)} | ${r.stepSeconds.toFixed(2)} | ` +
        `${r === ref ? '—' : dev.relRms.toExponential(2)} | ${r === ref ? '—' : dev.maxAbs.toExponential(2)} | ${r.loss.toFixed(5)}${r === ref ? '' : ` (${(((r.loss - ref.loss) / ref.loss) * 100).toFixed(3)}%)`} |`,
    );
  }
  const q8 = rows[2], q4 = rows[3];
  const fail: string[] = [];
  if (!(q8.linearBytes / q8.linearParams < 1.01)) fail.push('int8 bytes per parameter');
  if (!(q4.linearBytes / q4.linearParams < 0.57)) fail.push('nf4 bytes per parameter');
  if (!(q8.stepPeak < rows[1].stepPeak && q4.stepPeak < q8.stepPeak)) fail.push('step peaks are not ordered bf16 > int8 > nf4');
  if (fail.length > 0) throw new Error(`quant_memory: ${fail.join('; ')}`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
