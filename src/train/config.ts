// A fine-tuning run from FinLoRA's finetune_configs.json, read unchanged: the file is
// one JSON object of named runs, and every key means what FinLoRA's lora/finetune.py
// (and the axolotl config it writes) makes of it:
//
//   base_model                   hub id or model directory (axolotl base_model)
//   dataset_path                 JSONL {context, target}; FinLoRA writes it relative
//                                ("../data/train/..."), resolved here against the
//                                config file's directory (FinLoRA runs from lora/,
//                                the directory that holds the file)
//   lora_r, lora_alpha           PEFT r and lora_alpha (alpha default 16)
//   quant_bits                   8: int8 base (load_in_8bit), 4: NF4 with double
//                                quantization (load_in_4bit); absent or null: an
//                                unquantized base (FinLoRA's finetune_lora_plain.py)
//   learning_rate, num_epochs    the optimizer's peak rate, passes over the data
//   batch_size                   axolotl micro_batch_size: sequences per forward
//   gradient_accumulation_steps  micro-batches per optimizer step
//   peft_use_dora, peft_use_rslora
//
// Settings FinLoRA fixes in its axolotl template take its values when absent
// (DESIGN.md): lora_dropout 0.05, target_modules q_proj/k_proj/v_proj, cosine
// schedule, 10 warmup steps, weight decay 0, val_set_size 0.02, sequence_len 4096,
// gradient checkpointing on, evals_per_epoch 4, the "[INST] {context} [/INST]" prompt.
// Optional extra keys, named as in axolotl / transformers, override them.
//
// Everything is checked here, before any weights load: an unknown run lists the runs
// there are; a bad value names the file, the run, the key and what is wrong; an
// unknown key is refused (a typo would otherwise silently train with a default).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { locateJsonError } from '../io/json_error.js';

export const LR_SCHEDULERS = ['cosine', 'linear', 'constant'] as const;
export type LrScheduler = (typeof LR_SCHEDULERS)[number];

/** The Linear layers of a Llama-family decoder layer that adapters can wrap. */
export const LLAMA_LINEAR_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;

export type ExcessLengthStrategy = 'truncate' | 'drop';

export interface RunConfig {
  /** The run's key in the file. */
  readonly name: string;
  /** Absolute path of the config file. */
  readonly configFile: string;
  /** base_model as written; paths that start with ./ ../ / or ~ are resolved against the config file's directory. */
  readonly baseModel: string;
  /** dataset_path as written in the file. */
  readonly datasetPath: string;
  /** dataset_path resolved (against the config file's directory, or --data-dir). */
  readonly datasetFile: string;
  readonly loraR: number;
  readonly loraAlpha: number;
  readonly loraDropout: number;
  readonly targetModules: readonly string[];
  /** null: the base is not quantized. */
  readonly quantBits: 4 | 8 | null;
  readonly useDora: boolean;
  readonly useRslora: boolean;
  readonly learningRate: number;
  /** May be fractional, as transformers' num_train_epochs. */
  readonly numEpochs: number;
  readonly batchSize: number;
  readonly gradientAccumulationSteps: number;
  readonly sequenceLen: number;
  readonly warmupSteps: number;
  /** 'constant' is transformers' constant_with_warmup. */
  readonly lrScheduler: LrScheduler;
  readonly weightDecay: number;
  readonly adamBeta1: number;
  readonly adamBeta2: number;
  readonly adamEpsilon: number;
  /** 0 disables clipping. */
  readonly maxGradNorm: number;
  /** A fraction of the examples when below 1, else a count (as datasets' train_test_split). */
  readonly valSetSize: number;
  readonly evalsPerEpoch: number;
  readonly seed: number;
  readonly gradientCheckpointing: boolean;
  /** Stop after this many optimizer steps (overrides num_epochs), or null. */
  readonly maxSteps: number | null;
  /** A checkpoint every this many steps (besides each epoch end), or null. */
  readonly saveSteps: number | null;
  /** Checkpoints kept on disk (oldest removed first). */
  readonly saveTotalLimit: number;
  /** Storage dtype of the unquantized base weights. */
  readonly dtype: 'f32' | 'bf16';
  readonly device: string;
  /** axolotl's user-defined format: "{context}" (or axolotl's "{instruction}") marks where the context goes. */
  readonly promptFormat: string;
  readonly trainOnInputs: boolean;
  readonly excessLengthStrategy: ExcessLengthStrategy;
  readonly skipMalformedLines: boolean;
  /**
   * Where DoRA applies dropout while training: 'finlora' (on the LoRA branch's input only)
   * or 'peft' (PEFT's training forward, with a second product through W); see
   * src/adapters/lora/config.ts. Identical in eval mode and without dropout.
   */
  readonly dropoutSemantics: 'finlora' | 'peft';
  /** A held-out test file (eval_dataset_path, resolved as dataset_path) scored before and after training, or null. */
  readonly evalDatasetFile: string | null;
  /** Answer length for that evaluation; null: FinLoRA's for the file (10 for its sentiment sets, else 30). */
  readonly evalMaxNewTokens: number | null;
}

/** A config problem; the message names the file (and the run and key when there is one). */
export class RunConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunConfigError';
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: Json): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return `${JSON.stringify(v).slice(0, 40)} (an array)`;
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)} (a string)`;
  if (typeof v === 'boolean') return `${v} (a boolean)`;
  return String(v);
}

/** Parses JSON text; a syntax error names the file, the line and the column. */
export function parseJsonFile(text: string, file: string): Json {
  try {
    return JSON.parse(text) as Json;
  } catch {
    if (text.trim() === '') throw new RunConfigError(`${file} is not valid JSON: the file is empty`);
    const at = locateJsonError(text);
    throw new RunConfigError(`${file} is not valid JSON: ${at === null ? 'syntax error' : `${at.reason} at line ${at.line}, column ${at.column}`}`);
  }
}

const DEFAULTS = {
  lora_alpha: 16,
  lora_dropout: 0.05,
  target_modules: ['q_proj', 'k_proj', 'v_proj'],
  sequence_len: 4096,
  warmup_steps: 10,
  lr_scheduler: 'cosine',
  weight_decay: 0,
  adam_beta1: 0.9,
  adam_beta2: 0.999,
  adam_epsilon: 1e-8,
  max_grad_norm: 1.0,
  val_set_size: 0.02,
  evals_per_epoch: 4,
  seed: 42,
  gradient_checkpointing: true,
  save_total_limit: 2,
  dtype: 'f32',
  device: 'cpu',
  prompt_format: '[INST] {context} [/INST]',
  train_on_inputs: false,
  excess_length_strategy: 'truncate',
  skip_malformed_lines: false,
} as const;

const REQUIRED_KEYS = ['base_model', 'dataset_path', 'lora_r', 'learning_rate', 'num_epochs', 'batch_size', 'gradient_accumulation_steps'] as const;
const FINLORA_KEYS = [...REQUIRED_KEYS, 'quant_bits', 'peft_use_dora', 'peft_use_rslora', 'lora_alpha'] as const;
const EXTRA_KEYS = [
  'lora_dropout', 'target_modules', 'sequence_len', 'warmup_steps', 'lr_scheduler', 'weight_decay', 'adam_beta1', 'adam_beta2',
  'adam_epsilon', 'max_grad_norm', 'val_set_size', 'evals_per_epoch', 'seed', 'gradient_checkpointing', 'max_steps', 'save_steps',
  'save_total_limit', 'dtype', 'device', 'prompt_format', 'train_on_inputs', 'excess_length_strategy', 'skip_malformed_lines', 'dropout_semantics',
  'eval_dataset_path', 'eval_max_new_tokens',
] as const;
const KNOWN_KEYS: ReadonlySet<string> = new Set<string>([...FINLORA_KEYS, ...EXTRA_KEYS]);

/** Edit distance, for "did you mean" on misspelt keys and run names. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length];
}

function closest(word: string, options: Iterable<string>): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const o of options) {
    const d = distance(word, o);
    if (d < bestD) {
      bestD = d;
      best = o;
    }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : null;
}

/** Reads values of one run, each check naming the key and the run. */
class RunReader {
  constructor(private readonly run: JsonObject, private readonly where: string) {}

  fail(key: string, why: string): never {
    throw new RunConfigError(`${this.where}: ${key} ${why}`);
  }

  has(key: string): boolean {
    return this.run[key] !== undefined;
  }

  private value(key: string): Json | undefined {
    return this.run[key];
  }

  string(key: string, fallback?: string): string {
    const v = this.value(key);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      this.fail(key, 'is required');
    }
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${describe(v)}`);
    if (v.trim() === '') this.fail(key, 'must not be empty');
    return v;
  }

  boolean(key: string, fallback: boolean): boolean {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${describe(v)}`);
    return v;
  }

  private number(key: string, fallback?: number): number {
    const v = this.value(key);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      this.fail(key, 'is required');
    }
    if (typeof v !== 'number') this.fail(key, `must be a number, got ${describe(v)}`);
    return v;
  }

  integer(key: string, min: number, max: number, fallback?: number): number {
    const v = this.number(key, fallback);
    if (!Number.isInteger(v)) this.fail(key, `must be an integer, got ${v}`);
    if (v < min || v > max) this.fail(key, max === Number.MAX_SAFE_INTEGER ? `must be at least ${min}, got ${v}` : `must be between ${min} and ${max}, got ${v}`);
    return v;
  }

  optionalInteger(key: string, min: number): number | null {
    const v = this.value(key);
    if (v === undefined || v === null) return null;
    return this.integer(key, min, Number.MAX_SAFE_INTEGER);
  }

  /** A finite number with lo (<= or <) v (<= or <) hi. */
  real(key: string, range: { gt?: number; ge?: number; lt?: number; le?: number }, fallback?: number): number {
    const v = this.number(key, fallback);
    const ok =
      Number.isFinite(v) &&
      (range.gt === undefined || v > range.gt) &&
      (range.ge === undefined || v >= range.ge) &&
      (range.lt === undefined || v < range.lt) &&
      (range.le === undefined || v <= range.le);
    if (!ok) {
      const parts: string[] = [];
      if (range.gt !== undefined) parts.push(`greater than ${range.gt}`);
      if (range.ge !== undefined) parts.push(`at least ${range.ge}`);
      if (range.lt !== undefined) parts.push(`less than ${range.lt}`);
      if (range.le !== undefined) parts.push(`at most ${range.le}`);
      this.fail(key, `must be ${parts.join(' and ')}, got ${v}`);
    }
    return v;
  }

  oneOf<T extends string>(key: string, options: readonly T[], fallback: T): T {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'string' || !(options as readonly string[]).includes(v)) {
      this.fail(key, `must be one of ${options.map((o) => JSON.stringify(o)).join(', ')}, got ${describe(v)}`);
    }
    return v as T;
  }
}

export interface LoadRunOptions {
  /** Resolve dataset_path's file name in this directory instead (the --data-dir option). */
  dataDir?: string;
}

/** Reads and parses a config file: an object of runs, each an object. */
export function readConfigFile(file: string): { file: string; runs: JsonObject } {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new RunConfigError(`config file ${file} does not exist`);
    if (code === 'EISDIR') throw new RunConfigError(`config file ${file} is a directory`);
    throw new RunConfigError(`cannot read config file ${file}: ${(e as Error).message}`);
  }
  const parsed = parseJsonFile(text, file);
  if (!isObject(parsed)) throw new RunConfigError(`${file} must hold a JSON object of named runs, got ${describe(parsed)}`);
  for (const [name, run] of Object.entries(parsed)) {
    if (!isObject(run)) throw new RunConfigError(`${file}: run '${name}' must be a JSON object of settings, got ${describe(run)}`);
  }
  return { file: abs, runs: parsed };
}

/** The run names a config file defines, in file order. */
export function listRuns(file: string): string[] {
  return Object.keys(readConfigFile(file).runs);
}

/** Loads and validates one run. */
export function loadRun(file: string, name: string, opts: LoadRunOptions = {}): RunConfig {
  const { file: abs, runs } = readConfigFile(file);
  const run = runs[name];
  if (run === undefined || !Object.prototype.hasOwnProperty.call(runs, name)) {
    const names = Object.keys(runs);
    if (names.length === 0) throw new RunConfigError(`run '${name}' is not in ${file}, which defines no runs`);
    const hint = closest(name, names);
    throw new RunConfigError(`run '${name}' is not in ${file}${hint ? ` (did you mean '${hint}'?)` : ''}; runs there: ${names.join(', ')}`);
  }
  if (!isObject(run)) throw new RunConfigError(`${file}: run '${name}' must be a JSON object`);
  return validateRun(run, name, abs, file, opts);
}

/** Validates every run of a file (for `finlora finetune --check`, and tests). */
export function loadAllRuns(file: string, opts: LoadRunOptions = {}): RunConfig[] {
  const { file: abs, runs } = readConfigFile(file);
  return Object.entries(runs).map(([name, run]) => validateRun(run as JsonObject, name, abs, file, opts));
}

function validateRun(run: JsonObject, name: string, abs: string, shown: string, opts: LoadRunOptions): RunConfig {
  const where = `${shown}: run '${name}'`;
  for (const key of Object.keys(run)) {
    if (!KNOWN_KEYS.has(key)) {
      const hint = closest(key, KNOWN_KEYS);
      throw new RunConfigError(`${where}: unknown key '${key}'${hint ? ` (did you mean '${hint}'?)` : ''}; known keys: ${[...KNOWN_KEYS].join(', ')}`);
    }
  }
  const r: RunReader = new RunReader(run, where);
  for (const key of REQUIRED_KEYS) if (!r.has(key)) r.fail(key, 'is required (FinLoRA has no default for it)');

  const baseModel = r.string('base_model');
  const datasetPath = r.string('dataset_path');
  const configDir = path.dirname(abs);
  const resolveData = (p: string) => (opts.dataDir !== undefined ? path.resolve(opts.dataDir, path.basename(p)) : path.resolve(configDir, p));
  const datasetFile = resolveData(datasetPath);

  const quantRaw = run.quant_bits;
  let quantBits: 4 | 8 | null = null;
  if (quantRaw !== undefined && quantRaw !== null) {
    if (quantRaw !== 4 && quantRaw !== 8) {
      r.fail('quant_bits', `must be 8 (int8) or 4 (NF4), or absent for an unquantized base; got ${describe(quantRaw)}`);
    }
    quantBits = quantRaw === 4 ? 4 : 8;
  }

  const loraR = r.integer('lora_r', 1, 65536);
  const targets = readTargetModules(r, run.target_modules);
  const valSetSize = r.real('val_set_size', { ge: 0 }, DEFAULTS.val_set_size);
  if (valSetSize >= 1 && !Number.isInteger(valSetSize)) r.fail('val_set_size', `must be a fraction below 1 or a whole count of examples, got ${valSetSize}`);
  const promptFormat = r.string('prompt_format', DEFAULTS.prompt_format);
  const placeholders = (promptFormat.match(/\{(context|instruction)\}/g) ?? []).length;
  if (placeholders !== 1) r.fail('prompt_format', `must contain "{context}" exactly once, got ${JSON.stringify(promptFormat)}`);
  const dtype = r.oneOf('dtype', ['f32', 'bf16'], DEFAULTS.dtype);
  const device = r.string('device', DEFAULTS.device);
  if (!/^[a-z][a-z0-9]*(:\d+)?$/.test(device)) r.fail('device', `must be a device name such as "cpu", got ${describe(device)}`);

  const scheduler = run.lr_scheduler === 'constant_with_warmup' ? 'constant' : r.oneOf('lr_scheduler', LR_SCHEDULERS, DEFAULTS.lr_scheduler);

  return {
    name,
    configFile: abs,
    baseModel: /^(\.{1,2}[\\/]|~)/.test(baseModel) ? path.resolve(configDir, baseModel) : baseModel,
    datasetPath,
    datasetFile,
    loraR,
    loraAlpha: r.real('lora_alpha', { gt: 0 }, DEFAULTS.lora_alpha),
    loraDropout: r.real('lora_dropout', { ge: 0, lt: 1 }, DEFAULTS.lora_dropout),
    targetModules: targets,
    quantBits,
    useDora: r.boolean('peft_use_dora', false),
    useRslora: r.boolean('peft_use_rslora', false),
    learningRate: r.real('learning_rate', { gt: 0, le: 10 }),
    numEpochs: r.real('num_epochs', { gt: 0, le: 1e6 }),
    batchSize: r.integer('batch_size', 1, 1 << 20),
    gradientAccumulationSteps: r.integer('gradient_accumulation_steps', 1, 1 << 20),
    sequenceLen: r.integer('sequence_len', 2, 1 << 24, DEFAULTS.sequence_len),
    warmupSteps: r.integer('warmup_steps', 0, Number.MAX_SAFE_INTEGER, DEFAULTS.warmup_steps),
    lrScheduler: scheduler,
    weightDecay: r.real('weight_decay', { ge: 0 }, DEFAULTS.weight_decay),
    adamBeta1: r.real('adam_beta1', { ge: 0, lt: 1 }, DEFAULTS.adam_beta1),
    adamBeta2: r.real('adam_beta2', { ge: 0, lt: 1 }, DEFAULTS.adam_beta2),
    adamEpsilon: r.real('adam_epsilon', { gt: 0 }, DEFAULTS.adam_epsilon),
    maxGradNorm: r.real('max_grad_norm', { ge: 0 }, DEFAULTS.max_grad_norm),
    valSetSize,
    evalsPerEpoch: r.integer('evals_per_epoch', 0, 1000, DEFAULTS.evals_per_epoch),
    seed: r.integer('seed', 0, 2 ** 32 - 1, DEFAULTS.seed),
    gradientCheckpointing: r.boolean('gradient_checkpointing', DEFAULTS.gradient_checkpointing),
    maxSteps: r.optionalInteger('max_steps', 1),
    saveSteps: r.optionalInteger('save_steps', 1),
    saveTotalLimit: r.integer('save_total_limit', 1, 1000, DEFAULTS.save_total_limit),
    dtype,
    device,
    promptFormat,
    trainOnInputs: r.boolean('train_on_inputs', DEFAULTS.train_on_inputs),
    excessLengthStrategy: r.oneOf('excess_length_strategy', ['truncate', 'drop'], DEFAULTS.excess_length_strategy),
    skipMalformedLines: r.boolean('skip_malformed_lines', DEFAULTS.skip_malformed_lines),
    dropoutSemantics: r.oneOf('dropout_semantics', ['finlora', 'peft'], 'finlora'),
    evalDatasetFile: r.has('eval_dataset_path') ? resolveData(r.string('eval_dataset_path')) : null,
    evalMaxNewTokens: r.optionalInteger('eval_max_new_tokens', 1),
  };
}

function readTargetModules(r: RunReader, v: Json | undefined): string[] {
  if (v === undefined) return [...DEFAULTS.target_modules];
  // PEFT's shorthand for every linear layer but the output head.
  if (v === 'all-linear') return [...LLAMA_LINEAR_MODULES];
  if (!Array.isArray(v) || v.length === 0) r.fail('target_modules', `must be a non-empty array of module names or "all-linear", got ${describe(v ?? null)}`);
  const seen = new Set<string>();
  for (const m of v) {
    if (typeof m !== 'string') r.fail('target_modules', `must hold module names (strings), got ${describe(m)}`);
    if (!(LLAMA_LINEAR_MODULES as readonly string[]).includes(m)) {
      r.fail('target_modules', `names '${m}', which is not a Linear layer of a Llama decoder layer (${LLAMA_LINEAR_MODULES.join(', ')})`);
    }
    if (seen.has(m)) r.fail('target_modules', `names '${m}' twice`);
    seen.add(m);
  }
  return [...seen];
}

/**
 * The adapter's directory under the output root, as FinLoRA names it:
 * lora_adapters/<bits>bits_r<r>[_dora|_rslora]/<run_name>/. FinLoRA's repository calls
 * an unquantized base "fp16" (lora_adapters/fp16_r8/..., from finetune_lora_plain.py),
 * whatever the storage dtype, and it has no run with both DoRA and rsLoRA: such a run
 * goes to "_dora_rslora".
 */
export function adapterSubdir(cfg: Pick<RunConfig, 'quantBits' | 'loraR' | 'useDora' | 'useRslora' | 'name'>): string {
  const bits = cfg.quantBits === null ? 'fp16' : `${cfg.quantBits}bits`;
  const suffix = `${cfg.useDora ? '_dora' : ''}${cfg.useRslora ? '_rslora' : ''}`;
  return path.join(`${bits}_r${cfg.loraR}${suffix}`, cfg.name);
}

/** PEFT's scaling of the LoRA update: alpha / r, or alpha / sqrt(r) with rsLoRA. */
export function loraScale(cfg: Pick<RunConfig, 'loraAlpha' | 'loraR' | 'useRslora'>): number {
  return cfg.useRslora ? cfg.loraAlpha / Math.sqrt(cfg.loraR) : cfg.loraAlpha / cfg.loraR;
}
