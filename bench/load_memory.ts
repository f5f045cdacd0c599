// Peak memory while loading a checkpoint of Llama-3.2-1B's shape (hidden 2048, 16 layers,
// 32 heads, 8 kv heads, intermediate 8192, vocab 128256, tied embeddings; 1.24 B
// parameters, 2.47 GB in bf16).
//
// The parent writes a model directory with deterministic pseudo-random bf16 weights
// (config.json + one model.safetensors, by writeSafetensors) to a temporary folder, then
// loads it in a fresh child process so that the writer's memory does not count. The
// child reports its resident set size before loading and its peak (getrusage maxrss)
// after, checks sampled elements of every tensor against the generator, and the parent
// prints the peak against the weights' own size — the reference this benchmark
// measures against.
//
//   node dist/bench/load_memory.js [--dtype bf16|f32] [--keep DIR]
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { getBackend } from '../src/backend/registry.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { LlamaForCausalLM, type WeightDType } from '../src/models/llama/model.js';
import { contiguous, slice } from '../src/ops/view.js';
import { bf16BitsToF32 } from '../src/tensor/dtype.js';
import { empty, type Tensor } from '../src/tensor/tensor.js';
import { llamaLayout } from './util.js';

const CONFIG = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, bos_token_id: 128000, eos_token_id: 128001, head_dim: 64,
  hidden_act: 'silu', hidden_size: 2048, intermediate_size: 8192, max_position_embeddings: 131072, mlp_bias: false,
  model_type: 'llama', num_attention_heads: 32, num_hidden_layers: 16, num_key_value_heads: 8, rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0, tie_word_embeddings: true, torch_dtype: 'bfloat16', vocab_size: 128256,
};

/** Tensor names and shapes of the checkpoint, in Hugging Face's names (head_dim is hidden / heads). */
function layout(): [string, number[]][] {
  const shape = {
    hidden: CONFIG.hidden_size, intermediate: CONFIG.intermediate_size, layers: CONFIG.num_hidden_layers,
    heads: CONFIG.num_attention_heads, kvHeads: CONFIG.num_key_value_heads, vocab: CONFIG.vocab_size,
  };
  return llamaLayout(shape, CONFIG.tie_word_embeddings);
}

/** bf16 bits of element j of tensor t: finite values of magnitude about 2^-7..2^-1. */
function bits(t: number, j: number): number {
  let h = Math.imul(j + 1, 0x9e3779b1) ^ Math.imul(t + 1, 0x85ebca6b);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  const exp = 120 + ((h >>> 8) & 7);
  return ((h >>> 31) << 15) | (exp << 7) | (h & 0x7f);
}

function writeCheckpoint(dir: string): number {
  const cpu = getBackend('cpu');
  const tensors: Record<string, Tensor> = {};
  let bytes = 0;
  const chunk = new Uint16Array(1 << 20);
  layout().forEach(([name, shape], ti) => {
    const t = empty(shape, 'bf16', cpu);
    for (let done = 0; done < t.size; done += chunk.length) {
      const n = Math.min(chunk.length, t.size - done);
      for (let j = 0; j < n; j++) chunk[j] = bits(ti, done + j);
      cpu.write(t.storage.buffer, done * 2, new Uint8Array(chunk.buffer, 0, n * 2), 'bf16');
    }
    tensors[name] = t;
    bytes += t.size * 2;
  });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(CONFIG, null, 2));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  for (const t of Object.values(tensors)) t.dispose();
  return bytes;
}

interface ChildReport {
  baselineRss: number;
  peakRss: number;
  liveBytes: number;
  seconds: number;
  checked: number;
}

/** In the child: load, measure, verify samples. */
function loadAndMeasure(dir: string, dtype: WeightDType): ChildReport {
  const cpu = getBackend('cpu');
  const baselineRss = process.memoryUsage().rss;
  const t0 = performance.now();
  const model = LlamaForCausalLM.fromPretrained(dir, { dtype, device: cpu });
  const seconds = (performance.now() - t0) / 1000;
  const peakRss = process.resourceUsage().maxRSS * 1024;
  const liveBytes = cpu.liveBytes();
  const params = new Map(model.namedParameters());
  let checked = 0;
  layout().forEach(([name, shape], ti) => {
    const p = params.get(name);
    if (p === undefined) throw new Error(`loaded model lacks ${name}`);
    const cols = shape[shape.length - 1];
    for (const row of [0, Math.floor((shape.length === 1 ? 1 : shape[0]) / 2)]) {
      const r: Tensor = shape.length === 1 ? p : contiguous(slice(p, 0, row, row + 1));
      const got = r.toArray();
      const base = shape.length === 1 ? 0 : row * cols;
      for (const j of [0, 1, cols - 1]) {
        const want = bf16BitsToF32(bits(ti, base + j));
        if (got[j] !== want) throw new Error(`${name}[${row}, ${j}] = ${got[j]}, written ${want}`);
        checked++;
      }
      if (r !== p) r.dispose();
    }
  });
  model.dispose();
  return { baselineRss, peakRss, liveBytes, seconds, checked };
}

const GiB = 1024 ** 3;
const fmt = (b: number) => `${(b / GiB).toFixed(2)} GiB`;

function main(): void {
  const { values } = parseArgs({ options: { dtype: { type: 'string', default: 'bf16' }, keep: { type: 'string' }, child: { type: 'string' } } });
  const dtype: WeightDType = values.dtype === 'f32' ? 'f32' : 'bf16';
  if (values.child !== undefined) {
    process.stdout.write(JSON.stringify(loadAndMeasure(values.child, dtype)));
    return;
  }
  const dir = values.keep ?? fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-load-'));
  fs.mkdirSync(dir, { recursive: true });
  try {
    const t0 = performance.now();
    const fileBytes = writeCheckpoint(dir);
    console.log(`wrote ${fmt(fileBytes)} of bf16 weights to ${dir} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', dir, '--dtype', dtype], { encoding: 'utf8', maxBuffer: 1 << 20 });
    if (r.status !== 0) throw new Error(`loader child failed (${r.status}): ${r.stderr}`);
    const rep = JSON.parse(r.stdout) as ChildReport;
    const weightBytes = (fileBytes / 2) * (dtype === 'f32' ? 4 : 2);
    const over = rep.peakRss - rep.baselineRss;
    console.log(`loaded as ${dtype} in ${rep.seconds.toFixed(1)} s; ${rep.checked} sampled elements match what was written`);
    console.log(`weights in memory:          ${fmt(weightBytes)} (backend live bytes ${fmt(rep.liveBytes)})`);
    console.log(`RSS before loading:         ${fmt(rep.baselineRss)}`);
    console.log(`peak RSS while loading:     ${fmt(rep.peakRss)}  = ${(rep.peakRss / weightBytes).toFixed(3)} x weights`);
    console.log(`peak RSS added by loading:  ${fmt(over)}  = ${(over / weightBytes).toFixed(3)} x weights (${((over - weightBytes) / 2 ** 20).toFixed(0)} MiB beyond them)`);
  } finally {
    if (values.keep === undefined) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
