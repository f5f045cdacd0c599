// The settings of a `finlora pretrain` run: full-parameter causal-LM training of a
// Llama-architecture model, from random initialisation or from a model directory.
// They come from a JSON file (one object; paths in it are relative to the file) and/or
// command-line flags named after the keys (--hidden-size for hidden_size; paths
// relative to the working directory), flags winning. Every key is checked before any
// data is read, with the same messages as the fine-tuning configs (config.ts).
//
// The training keys mean what they mean in a fine-tuning run (learning_rate,
// num_epochs, batch_size, gradient_accumulation_steps, warmup_steps, lr_scheduler, ...)
// and feed the same trainer. The model is either base_model (its architecture and
// tokenizer), or the architecture keys below with a tokenizer: `tokenizer` (a
// directory holding tokenizer.json and tokenizer_config.json) or, by default, a
// byte-level BPE of vocab_size ids trained on the data (src/data/bpe.ts).
//
// Defaults follow common small-model practice (GPT-2 / llm.c): AdamW with betas 0.9 /
// 0.95, weight decay 0.1, warmup then cosine decay, clipping at 1.0, init N(0, 0.02²).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LR_SCHEDULERS, type LrScheduler, parseJsonFile, RunConfigError } from './config.js';
import type { TrainSettings } from './trainer.js';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

type Spec =
  | { kind: 'int'; min: number; def: number | null }
  | { kind: 'real'; gt?: number; ge?: number; lt?: number; def: number }
  | { kind: 'bool'; def: boolean }
  | { kind: 'enum'; options: readonly string[]; def: string }
  | { kind: 'string'; def: string | null }
  | { kind: 'path'; def: string | null }
  | { kind: 'paths' };

/** Every key, its type and its default (null: absent unless given). */
export const PRETRAIN_KEYS = {
  output_dir: { kind: 'path', def: null },
  data: { kind: 'paths' },
  base_model: { kind: 'string', def: null },
  tokenizer: { kind: 'path', def: null },
  vocab_size: { kind: 'int', min: 262, def: 3072 },
  tokenizer_min_frequency: { kind: 'int', min: 1, def: 2 },
  hidden_size: { kind: 'int', min: 2, def: 256 },
  intermediate_size: { kind: 'int', min: 1, def: 768 },
  num_hidden_layers: { kind: 'int', min: 1, def: 4 },
  num_attention_heads: { kind: 'int', min: 1, def: 4 },
  num_key_value_heads: { kind: 'int', min: 1, def: null },
  max_position_embeddings: { kind: 'int', min: 2, def: 1024 },
  rope_theta: { kind: 'real', gt: 0, def: 10000 },
  rms_norm_eps: { kind: 'real', gt: 0, def: 1e-5 },
  tie_word_embeddings: { kind: 'bool', def: true },
  initializer_range: { kind: 'real', gt: 0, def: 0.02 },
  learning_rate: { kind: 'real', gt: 0, def: 1e-3 },
  num_epochs: { kind: 'real', gt: 0, def: 1 },
  max_steps: { kind: 'int', min: 1, def: null },
  batch_size: { kind: 'int', min: 1, def: 8 },
  gradient_accumulation_steps: { kind: 'int', min: 1, def: 1 },
  sequence_len: { kind: 'int', min: 2, def: 256 },
  warmup_steps: { kind: 'int', min: 0, def: 100 },
  lr_scheduler: { kind: 'enum', options: LR_SCHEDULERS, def: 'cosine' },
  weight_decay: { kind: 'real', ge: 0, def: 0.1 },
  adam_beta1: { kind: 'real', ge: 0, lt: 1, def: 0.9 },
  adam_beta2: { kind: 'real', ge: 0, lt: 1, def: 0.95 },
  adam_epsilon: { kind: 'real', gt: 0, def: 1e-8 },
  max_grad_norm: { kind: 'real', ge: 0, def: 1 },
  val_set_size: { kind: 'real', ge: 0, def: 0.02 },
  evals_per_epoch: { kind: 'int', min: 0, def: 10 },
  seed: { kind: 'int', min: 0, def: 42 },
  save_steps: { kind: 'int', min: 1, def: null },
  save_total_limit: { kind: 'int', min: 1, def: 1 },
  dtype: { kind: 'enum', options: ['bf16', 'f32'], def: 'bf16' },
  device: { kind: 'string', def: 'cpu' },
} as const satisfies Record<string, Spec>;

export type PretrainKey = keyof typeof PRETRAIN_KEYS;

const ARCHITECTURE_KEYS: readonly PretrainKey[] = [
  'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'max_position_embeddings', 'rope_theta',
  'rms_norm_eps', 'tie_word_embeddings', 'vocab_size', 'tokenizer', 'tokenizer_min_frequency',
];

export interface Architecture {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numHiddenLayers: number;
  readonly numAttentionHeads: number;
  readonly numKeyValueHeads: number;
  readonly maxPositionEmbeddings: number;
  readonly ropeTheta: number;
  readonly rmsNormEps: number;
  readonly tieWordEmbeddings: boolean;
}

export interface PretrainConfig extends TrainSettings {
  /** The config file (absolute), or null for flags only. */
  readonly configFile: string | null;
  readonly outputDir: string;
  readonly data: readonly string[];
  /** Continue from this model (directory or hub id); null: random initialisation. */
  readonly baseModel: string | null;
  /** A directory with tokenizer.json + tokenizer_config.json; null: train one (or base_model's). */
  readonly tokenizerDir: string | null;
  readonly vocabSize: number;
  readonly tokenizerMinFrequency: number;
  /** null when base_model gives the architecture. */
  readonly architecture: Architecture | null;
  readonly initializerRange: number;
  readonly sequenceLen: number;
  readonly valSetSize: number;
  /** Storage dtype of the written model.safetensors (training is f32). */
  readonly dtype: 'f32' | 'bf16';
  readonly device: string;
}

function describe(v: Json): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `${JSON.stringify(v)} (a string)`;
  return String(v);
}

/** A flag value (a string) as the JSON value its key takes. */
export function flagValue(key: PretrainKey, raw: string): Json {
  const spec: Spec = PRETRAIN_KEYS[key];
  switch (spec.kind) {
    case 'int':
    case 'real': {
      const n = Number(raw);
      return raw.trim() === '' || Number.isNaN(n) ? raw : n;
    }
    case 'bool':
      return raw === 'true' ? true : raw === 'false' ? false : raw;
    default:
      return raw;
  }
}

export interface PretrainSources {
  /** The --config file, if any. */
  configFile?: string;
  /** Values from flags (already typed by flagValue), relative paths against cwd. */
  flags: Partial<Record<PretrainKey, Json>>;
  cwd?: string;
}

/** Reads, merges and validates the settings (see the file header). */
export function loadPretrainConfig(src: PretrainSources): PretrainConfig {
  const cwd = src.cwd ?? process.cwd();
  let fileValues: Record<string, Json> = {};
  let configFile: string | null = null;
  if (src.configFile !== undefined) {
    configFile = path.resolve(cwd, src.configFile);
    let text: string;
    try {
      text = fs.readFileSync(configFile, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new RunConfigError(code === 'ENOENT' ? `config file ${src.configFile} does not exist` : `cannot read config file ${src.configFile}: ${(e as Error).message}`);
    }
    const parsed = parseJsonFile(text, src.configFile);
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new RunConfigError(`${src.configFile} must hold one JSON object of settings, got ${describe(parsed)}`);
    fileValues = parsed;
  }
  const where = src.configFile ?? 'finlora pretrain';
  const known = new Set(Object.keys(PRETRAIN_KEYS));
  for (const key of Object.keys(fileValues)) {
    if (!known.has(key)) throw new RunConfigError(`${where}: unknown key '${key}'; known keys: ${[...known].join(', ')}`);
  }
  const fileDir = configFile === null ? cwd : path.dirname(configFile);
  // Each value with the directory its relative paths are relative to.
  const raw = (key: PretrainKey): { v: Json; dir: string } | undefined => {
    const flag = src.flags[key];
    if (flag !== undefined) return { v: flag, dir: cwd };
    const v = fileValues[key];
    return v === undefined ? undefined : { v, dir: fileDir };
  };
  const fail = (key: string, why: string): never => {
    throw new RunConfigError(`${where}: ${key} ${why}`);
  };

  const get = (key: PretrainKey): Json => {
    const spec: Spec = PRETRAIN_KEYS[key];
    const r = raw(key);
    switch (spec.kind) {
      case 'int': {
        if (r === undefined || r.v === null) return spec.def;
        if (typeof r.v !== 'number' || !Number.isInteger(r.v)) return fail(key, `must be an integer, got ${describe(r.v)}`);
        if (r.v < spec.min) return fail(key, `must be at least ${spec.min}, got ${r.v}`);
        return r.v;
      }
      case 'real': {
        if (r === undefined) return spec.def;
        const v = r.v;
        if (typeof v !== 'number' || !Number.isFinite(v)) return fail(key, `must be a number, got ${describe(v)}`);
        if ((spec.gt !== undefined && !(v > spec.gt)) || (spec.ge !== undefined && !(v >= spec.ge)) || (spec.lt !== undefined && !(v < spec.lt))) {
          const parts = [spec.gt !== undefined ? `greater than ${spec.gt}` : '', spec.ge !== undefined ? `at least ${spec.ge}` : '', spec.lt !== undefined ? `less than ${spec.lt}` : ''].filter((p) => p !== '');
          return fail(key, `must be ${parts.join(' and ')}, got ${v}`);
        }
        return v;
      }
      case 'bool':
        if (r === undefined) return spec.def;
        if (typeof r.v !== 'boolean') return fail(key, `must be true or false, got ${describe(r.v)}`);
        return r.v;
      case 'enum':
        if (r === undefined) return spec.def;
        if (typeof r.v !== 'string' || !spec.options.includes(r.v)) return fail(key, `must be one of ${spec.options.map((o) => JSON.stringify(o)).join(', ')}, got ${describe(r.v)}`);
        return r.v;
      case 'string':
      case 'path': {
        if (r === undefined || r.v === null) return spec.def;
        if (typeof r.v !== 'string' || r.v.trim() === '') return fail(key, `must be a non-empty string, got ${describe(r.v)}`);
        // base_model may be a hub id; only what looks like a path is resolved.
        if (spec.kind === 'string' && !/^(\.{1,2}[\\/]|[\\/]|~)/.test(r.v)) return r.v;
        return path.resolve(r.dir, r.v);
      }
      case 'paths': {
        if (r === undefined) return fail(key, 'is required: the text files to train on (.txt, or .jsonl with "text" or FinLoRA\'s "context" + "target")');
        const list = typeof r.v === 'string' ? [r.v] : r.v;
        if (!Array.isArray(list) || list.length === 0 || !list.every((x) => typeof x === 'string' && x.trim() !== '')) {
          return fail(key, `must be a file name or a non-empty array of file names, got ${describe(r.v)}`);
        }
        return list.map((x) => path.resolve(r.dir, x as string));
      }
    }
  };
  const int = (k: PretrainKey) => get(k) as number;
  const opt = (k: PretrainKey) => get(k) as number | null;
  const real = (k: PretrainKey) => get(k) as number;

  const outputDir = get('output_dir');
  if (outputDir === null) fail('output_dir', 'is required: the model directory to write');
  const baseModel = get('base_model') as string | null;
  if (baseModel !== null) {
    const given = ARCHITECTURE_KEYS.filter((k) => raw(k) !== undefined);
    if (given.length > 0) fail(given[0], `cannot be set with base_model, which gives the architecture and tokenizer (${given.join(', ')})`);
  }
  let architecture: Architecture | null = null;
  if (baseModel === null) {
    const heads = int('num_attention_heads');
    const hidden = int('hidden_size');
    const kv = opt('num_key_value_heads') ?? heads;
    if (hidden % heads !== 0) fail('hidden_size', `(${hidden}) must be a multiple of num_attention_heads (${heads})`);
    if ((hidden / heads) % 2 !== 0) fail('hidden_size', `/ num_attention_heads must be even for rotary embeddings, got ${hidden / heads}`);
    if (heads % kv !== 0) fail('num_key_value_heads', `(${kv}) must divide num_attention_heads (${heads})`);
    architecture = {
      hiddenSize: hidden, intermediateSize: int('intermediate_size'), numHiddenLayers: int('num_hidden_layers'), numAttentionHeads: heads,
      numKeyValueHeads: kv, maxPositionEmbeddings: int('max_position_embeddings'), ropeTheta: real('rope_theta'), rmsNormEps: real('rms_norm_eps'),
      tieWordEmbeddings: get('tie_word_embeddings') as boolean,
    };
  }
  const valSetSize = real('val_set_size');
  if (valSetSize >= 1 && !Number.isInteger(valSetSize)) fail('val_set_size', `must be a fraction below 1 or a whole count of blocks, got ${valSetSize}`);
  const sequenceLen = int('sequence_len');
  if (architecture !== null && sequenceLen > architecture.maxPositionEmbeddings) {
    fail('sequence_len', `(${sequenceLen}) must not exceed max_position_embeddings (${architecture.maxPositionEmbeddings})`);
  }
  const device = get('device') as string;
  if (!/^[a-z][a-z0-9]*(:\d+)?$/.test(device)) fail('device', `must be a device name such as "cpu", got ${JSON.stringify(device)}`);
  return {
    name: path.basename(outputDir as string),
    configFile,
    outputDir: outputDir as string,
    data: get('data') as string[],
    baseModel,
    tokenizerDir: get('tokenizer') as string | null,
    vocabSize: int('vocab_size'),
    tokenizerMinFrequency: int('tokenizer_min_frequency'),
    architecture,
    initializerRange: real('initializer_range'),
    learningRate: real('learning_rate'),
    numEpochs: real('num_epochs'),
    maxSteps: opt('max_steps'),
    batchSize: int('batch_size'),
    gradientAccumulationSteps: int('gradient_accumulation_steps'),
    sequenceLen,
    warmupSteps: int('warmup_steps'),
    lrScheduler: get('lr_scheduler') as LrScheduler,
    weightDecay: real('weight_decay'),
    adamBeta1: real('adam_beta1'),
    adamBeta2: real('adam_beta2'),
    adamEpsilon: real('adam_epsilon'),
    maxGradNorm: real('max_grad_norm'),
    valSetSize,
    evalsPerEpoch: int('evals_per_epoch'),
    seed: int('seed'),
    saveSteps: opt('save_steps'),
    saveTotalLimit: int('save_total_limit'),
    dtype: get('dtype') as 'f32' | 'bf16',
    device,
  };
}
