// Merging an adapter into its base model and writing the result as a Hugging Face model
// directory that transformers (and finlora) load without PEFT:
//
//   LoRA  W' = W + s·B·A
//   DoRA  W' = (m / ‖W + s·B·A‖)[:, None] ⊙ (W + s·B·A)     (PEFT's merge, layer.ts/dora.ts)
//
// The base is loaded in f32 whatever its checkpoint dtype, so the merge itself does not
// round; the merged weights are then written in the checkpoint's dtype (or one asked
// for) as safetensors shards with model.safetensors.index.json, beside a copy of every
// non-weight file of the base directory (config.json, tokenizer files, generation
// config, chat template). config.json's dtype is updated when the written dtype differs.
//
// A quantized base (a checkpoint saved by bitsandbytes, or a float one loaded with
// `quant` as the adapter was trained, FinLoRA's quant_bits) is run quantized with the
// adapter for the reference logits, then dequantized to f32 and merged with the same
// formulas: the adapter was trained against the dequantized W (DoRA's norm included),
// so that is the W it belongs to. The merged weights then carry the quantization's
// rounding, which the report says (quantized) for the caller to warn about; the written
// config.json drops the base's quantization_config, since the weights are dense.
//
// A merge can lose quality without anyone noticing (a bf16 rounding of W', an adapter
// for another base), so mergeAdapter runs the model on a probe input before merging,
// reloads the directory it wrote, runs it again, and reports the largest logit
// difference. The directory is written under a temporary name and renamed into place
// only after that reload succeeded: a failure leaves nothing at the destination.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { noGrad } from '../autograd/tape.js';
import type { Backend } from '../backend/backend.js';
import { defaultBackend } from '../backend/registry.js';
import { writeSafetensors } from '../io/safetensors.js';
import { WEIGHTS_INDEX_NAME } from '../models/checkpoint.js';
import { LlamaForCausalLM } from '../models/llama/model.js';
import { Linear } from '../nn/linear.js';
import { tensor } from '../ops/creation.js';
import { dequantizeModel } from '../quant/model.js';
import type { QuantFormat } from '../quant/weight.js';
import { cast } from '../ops/view.js';
import { DTYPE_BYTES } from '../tensor/dtype.js';
import { Rng } from '../tensor/rng.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import type { LoraModel } from './lora/model.js';
import { loadPeftAdapter } from './peft.js';

/** Float dtypes a merged checkpoint may be written in. */
export type MergedDType = 'f32' | 'bf16' | 'f16';

const TORCH_NAMES: Readonly<Record<MergedDType, string>> = { f32: 'float32', bf16: 'bfloat16', f16: 'float16' };

/** Files of a model directory that hold weights (not copied into the merged directory). */
function isWeightFile(name: string): boolean {
  return /\.(safetensors|bin|pt|pth|gguf|msgpack|h5|ckpt)$/.test(name) || name.endsWith('.index.json');
}

/** A failure to merge or write; the message names the file or directory. */
export class MergeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MergeError';
  }
}

export interface WriteModelOptions {
  readonly dtype: MergedDType;
  /** Largest shard in bytes (default 5 GB, as transformers' save_pretrained). */
  readonly maxShardBytes?: number;
}

export interface WrittenModel {
  readonly shards: readonly string[];
  readonly totalBytes: number;
}

/** Writes `tensors` (name -> tensor, in order) as safetensors shards with an index into `dir`. */
export function writeShardedWeights(dir: string, tensors: readonly [string, Tensor][], opts: WriteModelOptions): WrittenModel {
  const max = opts.maxShardBytes ?? 5e9;
  const bytesOf = (t: Tensor) => t.size * DTYPE_BYTES[opts.dtype];
  const groups: [string, Tensor][][] = [];
  let size = Infinity;
  for (const entry of tensors) {
    const b = bytesOf(entry[1]);
    if (size + b > max || groups.length === 0) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1].push(entry);
    size += b;
  }
  const pad = (n: number) => String(n).padStart(5, '0');
  const names = groups.map((_, i) => `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`);
  const weightMap: [string, string][] = [];
  let total = 0;
  groups.forEach((group, i) => {
    scope(() => {
      const record: Record<string, Tensor> = {};
      for (const [name, t] of group) {
        record[name] = cast(t, opts.dtype);
        weightMap.push([name, names[i]]);
        total += bytesOf(t);
      }
      writeSafetensors(path.join(dir, names[i]), record, { format: 'pt' });
    });
  });
  weightMap.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const index = { metadata: { total_size: total }, weight_map: Object.fromEntries(weightMap) };
  fs.writeFileSync(path.join(dir, WEIGHTS_INDEX_NAME), `${JSON.stringify(index, null, 2)}\n`);
  return { shards: names, totalBytes: total };
}

/** Copies the non-weight files of a model directory (config, tokenizer, ...); updates config.json's dtype. */
function copyModelFiles(src: string, dst: string, dtype: MergedDType): void {
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (!e.isFile() || e.name.startsWith('.') || isWeightFile(e.name)) continue;
    const from = path.join(src, e.name), to = path.join(dst, e.name);
    if (e.name !== 'config.json') {
      fs.copyFileSync(from, to);
      continue;
    }
    const text = fs.readFileSync(from, 'utf8');
    const raw: unknown = JSON.parse(text);
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new MergeError(`${from}: not a JSON object`);
    const { quantization_config: quantized, ...cfg } = raw as Record<string, unknown>;
    const key = 'dtype' in cfg ? 'dtype' : 'torch_dtype';
    if (cfg[key] === TORCH_NAMES[dtype] && quantized === undefined) fs.copyFileSync(from, to);
    else fs.writeFileSync(to, `${JSON.stringify({ ...cfg, [key]: TORCH_NAMES[dtype] }, null, 2)}\n`);
  }
}

/** The base weights of a model with an adapter: every parameter but the adapter's own. */
export function baseParameters(model: LlamaForCausalLM, lm: LoraModel): [string, Tensor][] {
  const adapter = new Set(lm.trainableParameters());
  return [...model.namedParameters()].filter(([, t]) => !adapter.has(t));
}

/** `length` deterministic token ids below `vocab` (the default probe input). */
export function probeIds(vocab: number, length = 16): number[] {
  const rng = new Rng(1234);
  return Array.from({ length }, () => rng.int(vocab));
}

function logitsOf(model: LlamaForCausalLM, ids: readonly number[]): Float32Array {
  return noGrad(() =>
    scope(() => {
      const t = tensor(ids, [1, ids.length], { dtype: 'int32', device: model.backend });
      return Float32Array.from(model.forward(t).toArray());
    }),
  );
}

export interface MergeOptions {
  readonly modelDir: string;
  readonly adapterDir: string;
  readonly outDir: string;
  /** Written dtype; default: the dtype config.json declares (f32 when none or another). */
  readonly dtype?: MergedDType;
  readonly maxShardBytes?: number;
  /** Probe token ids (default: probeIds(vocab)). */
  readonly probe?: readonly number[];
  /**
   * Quantize a float base as the adapter was trained over it (quant_bits 8: int8, 4:
   * nf4) before merging; a base saved quantized by bitsandbytes is quantized already.
   */
  readonly quant?: QuantFormat;
  /** The backend to load and merge on (default: the default device). */
  readonly device?: string | Backend;
}

export interface MergeReport {
  readonly layers: number;
  readonly useDora: boolean;
  readonly dtype: MergedDType;
  readonly shards: readonly string[];
  readonly totalBytes: number;
  readonly probeLength: number;
  /** max |logits(merged model as written) − logits(base + adapter)| on the probe. */
  readonly maxLogitDiff: number;
  /** max |logits(base + adapter) − logits(base)|: how much the adapter changes the model. */
  readonly adapterEffect: number;
  /**
   * The base's quantization when it was quantized: the merged weights are the
   * dequantized W merged with the adapter, and carry its rounding. maxLogitDiff is then
   * measured against the quantized base with the adapter, unmerged.
   */
  readonly quantized: { readonly format: QuantFormat; readonly layers: number } | null;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d;
  }
  return m;
}

/** Merges the adapter in adapterDir into the model in modelDir and writes a model directory at outDir. */
export function mergeAdapter(opts: MergeOptions): MergeReport {
  const out = path.resolve(opts.outDir);
  if (fs.existsSync(out) && (!fs.statSync(out).isDirectory() || fs.readdirSync(out).length > 0)) {
    throw new MergeError(`${opts.outDir}: already exists and is not an empty directory (choose a new --out)`);
  }
  const parent = path.dirname(out);
  if (!fs.existsSync(parent)) throw new MergeError(`${parent}: no such directory (the parent of --out must exist)`);
  // f32 compute throughout, also where a quantized base would default to bf16 on a GPU:
  // the reported logit difference is the merge's error, not bf16 rounding noise.
  const device = opts.device ?? defaultBackend();
  const model = LlamaForCausalLM.fromPretrained(opts.modelDir, { dtype: 'f32', device, computeDtype: 'f32', ...(opts.quant !== undefined ? { quant: opts.quant } : {}) });
  let stage: string | null = null;
  try {
    const declared = model.config.dtype;
    const dtype: MergedDType = opts.dtype ?? (declared === 'bf16' || declared === 'f16' ? declared : 'f32');
    const probe = opts.probe ?? probeIds(model.config.vocabSize);
    for (const id of probe) {
      if (!Number.isInteger(id) || id < 0 || id >= model.config.vocabSize) throw new MergeError(`probe id ${id} is outside the vocabulary of ${model.config.vocabSize}`);
    }
    model.eval();
    const before = logitsOf(model, probe);
    let lm = loadPeftAdapter(opts.adapterDir, model);
    const adapted = logitsOf(model, probe);
    // A quantized W cannot be written: take the adapter off, hold W dequantized, put it back.
    let quantized: MergeReport['quantized'] = null;
    if (lm.layers.size > 0 && [...model.namedModules()].some(([, m]) => m instanceof Linear && m.quantized !== null)) {
      lm.unload();
      const layers = dequantizeModel(model);
      quantized = { format: layers[0][1], layers: layers.length };
      lm = loadPeftAdapter(opts.adapterDir, model);
    }
    lm.merge();
    stage = fs.mkdtempSync(path.join(parent, `.${path.basename(out)}.new-`));
    const written = writeShardedWeights(stage, baseParameters(model, lm), { dtype, maxShardBytes: opts.maxShardBytes });
    copyModelFiles(opts.modelDir, stage, dtype);
    const report = { layers: lm.layers.size, useDora: lm.config.use_dora, dtype, shards: written.shards, totalBytes: written.totalBytes, probeLength: probe.length, quantized };
    model.dispose();
    const merged = LlamaForCausalLM.fromPretrained(stage, { dtype: 'f32', device, computeDtype: 'f32' });
    let after: Float32Array;
    try {
      merged.eval();
      after = logitsOf(merged, probe);
    } finally {
      merged.dispose();
    }
    if (fs.existsSync(out)) fs.rmdirSync(out);
    fs.renameSync(stage, out);
    stage = null;
    return { ...report, maxLogitDiff: maxAbsDiff(after, adapted), adapterEffect: maxAbsDiff(adapted, before) };
  } finally {
    model.dispose();
    if (stage !== null) fs.rmSync(stage, { recursive: true, force: true });
  }
}
