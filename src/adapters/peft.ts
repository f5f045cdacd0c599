// LoRA / DoRA adapters in Hugging Face PEFT's format, both ways:
//
//   adapter_config.json        the LoraConfig as PEFT 0.21's save_pretrained writes it:
//                              every field, keys sorted, two-space indent, ASCII only
//   adapter_model.safetensors  f32 tensors under PEFT's keys, with {"format": "pt"}:
//     base_model.model.<module>.lora_A.weight          [r, in]
//     base_model.model.<module>.lora_B.weight          [out, r]
//     base_model.model.<module>.lora_magnitude_vector  [out]    (DoRA; no ".weight")
//
// Loading also takes what other writers produce: FinLoRA's published adapters (PEFT
// 0.15's shorter config, Llama-3.1-8B, r 8 on q/k/v, DoRA), the older DoRA key
// <module>.lora_magnitude_vector.weight, torchtune's <module>.magnitude (with
// lora_a / lora_b), keys without the base_model.model. prefix, and bf16 / f16 tensors
// (converted to f32). Keys absent from an adapter_config.json take PEFT's defaults (r 8,
// lora_alpha 8, target_modules q_proj and v_proj for Llama), since that is how PEFT
// reads the file. Settings finlora does not implement (fan_in_fan_out, trained biases,
// modules_to_save, layers_to_transform, other LoRA variants) are refused by name.
//
// Everything is checked before the model is touched: the config, every key, shape and
// dtype against the modules the config selects. An error names the file and the module.
// Saving writes both files into a fresh directory that is renamed into place, or
// replaces only the weights file when the config is unchanged, so a crash leaves the old
// adapter or the new one (writeAdapterFiles states the one narrow exception).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SafetensorsError, SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { assign } from '../ops/inplace.js';
import type { Module } from '../nn/module.js';
import type { LlamaConfig } from '../models/llama/config.js';
import { formatShape } from '../tensor/shape.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import { isTargeted, layerHyperparameters, type LoraConfig, type LoraConfigInput, LoraConfigError, loraConfig } from './lora/config.js';
import { type InjectOptions, LoraModel } from './lora/model.js';

export const ADAPTER_CONFIG_NAME = 'adapter_config.json';
export const ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors';
/** The PEFT release whose adapter_config.json layout finlora writes. */
export const PEFT_FORMAT_VERSION = '0.21.0';
const KEY_PREFIX = 'base_model.model.';

/** A missing, malformed or unfitting adapter; the message names the file (and module). */
export class AdapterError extends Error {
  constructor(readonly file: string, message: string, readonly module?: string) {
    super(`${file}: ${module === undefined ? '' : `${module}: `}${message}`);
    this.name = 'AdapterError';
  }
}

// ------------------------------------------------------------------ adapter_config.json

/** PEFT's LoraConfig defaults, for keys a file leaves out. */
const PEFT_FILE_DEFAULTS = { r: 8, lora_alpha: 8, lora_dropout: 0, use_rslora: false, use_dora: false, bias: 'none' } as const;
/** PEFT's target_modules for Llama-family models when the config gives none. */
const PEFT_LLAMA_TARGETS = ['q_proj', 'v_proj'];

/** Keys whose non-default values select behaviour finlora does not implement. */
const UNSUPPORTED: readonly [string, (v: unknown) => boolean, string][] = [
  ['fan_in_fan_out', (v) => v === true, 'Conv1D-style (fan_in_fan_out) weights'],
  ['lora_bias', (v) => v === true, 'trained LoRA biases (lora_bias)'],
  ['modules_to_save', (v) => Array.isArray(v) && v.length > 0, 'fully trained extra modules (modules_to_save)'],
  ['layers_to_transform', (v) => v !== null && v !== undefined && !(Array.isArray(v) && v.length === 0), 'layers_to_transform'],
  ['layer_replication', (v) => v !== null && v !== undefined, 'layer_replication'],
  ['target_parameters', (v) => v !== null && v !== undefined && !(Array.isArray(v) && v.length === 0), 'target_parameters'],
  ['trainable_token_indices', (v) => v !== null && v !== undefined, 'trainable_token_indices'],
  ['use_qalora', (v) => v === true, 'QA-LoRA (use_qalora)'],
  ['use_bdlora', (v) => v !== null && v !== undefined && v !== false, 'block-diagonal LoRA (use_bdlora)'],
  ['alora_invocation_tokens', (v) => v !== null && v !== undefined, 'activated LoRA (alora_invocation_tokens)'],
  ['arrow_config', (v) => v !== null && v !== undefined, 'Arrow routing (arrow_config)'],
  ['velora_config', (v) => v !== null && v !== undefined, 'VeLoRA (velora_config)'],
  ['kasa_config', (v) => v !== null && v !== undefined, 'KaSA (kasa_config)'],
  ['monteclora_config', (v) => v !== null && v !== undefined, 'MonteCLoRA (monteclora_config)'],
];

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses adapter_config.json text (`file` names it in errors) into a validated LoraConfig. */
export function parseAdapterConfig(text: string, file: string): LoraConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new AdapterError(file, `not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!isRecord(raw)) throw new AdapterError(file, 'must hold a JSON object');
  const peftType = raw.peft_type;
  if (peftType !== 'LORA') {
    throw new AdapterError(file, `peft_type ${JSON.stringify(peftType ?? null)} is not supported (finlora loads LoRA and DoRA adapters, peft_type "LORA")`);
  }
  const task = raw.task_type;
  if (task !== undefined && task !== null && task !== 'CAUSAL_LM') {
    throw new AdapterError(file, `task_type ${JSON.stringify(task)} is not supported (finlora runs causal language models, "CAUSAL_LM")`);
  }
  for (const [key, bad, what] of UNSUPPORTED) {
    if (bad(raw[key])) throw new AdapterError(file, `${key} = ${JSON.stringify(raw[key])}: ${what} is not supported`);
  }
  const get = <T>(key: string, fallback: T): unknown => (raw[key] === undefined || raw[key] === null ? fallback : raw[key]);
  const input: Record<string, unknown> = {
    r: get('r', PEFT_FILE_DEFAULTS.r),
    lora_alpha: get('lora_alpha', PEFT_FILE_DEFAULTS.lora_alpha),
    lora_dropout: get('lora_dropout', PEFT_FILE_DEFAULTS.lora_dropout),
    use_rslora: get('use_rslora', PEFT_FILE_DEFAULTS.use_rslora),
    use_dora: get('use_dora', PEFT_FILE_DEFAULTS.use_dora),
    bias: get('bias', PEFT_FILE_DEFAULTS.bias),
    target_modules: get('target_modules', PEFT_LLAMA_TARGETS),
    exclude_modules: get('exclude_modules', null),
    rank_pattern: get('rank_pattern', {}),
    alpha_pattern: get('alpha_pattern', {}),
    base_model_name_or_path: get('base_model_name_or_path', null),
  };
  try {
    // loraConfig checks the type of every value at run time: the file's values are unknown here.
    return loraConfig(input as LoraConfigInput);
  } catch (e) {
    if (e instanceof LoraConfigError) throw new AdapterError(file, e.message);
    throw e;
  }
}

/** Reads and validates <dir>/adapter_config.json. */
export function readAdapterConfig(dir: string): LoraConfig {
  const file = path.join(dir, ADAPTER_CONFIG_NAME);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = isRecord(e) && typeof e.code === 'string' ? e.code : '';
    throw new AdapterError(file, code === 'ENOENT' ? 'missing (is this a PEFT adapter directory?)' : `cannot read: ${e instanceof Error ? e.message : String(e)}`);
  }
  return parseAdapterConfig(text, file);
}

/** JSON as Python's json.dumps(obj, indent=2, sort_keys=True) writes it (ensure_ascii, floats keep ".0"). */
function pythonJson(value: unknown, floatKeys: ReadonlySet<string>): string {
  const sortDeep = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(sortDeep) : isRecord(v) ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortDeep(v[k])])) : v;
  const text = JSON.stringify(sortDeep(value), (k, v: unknown) => (floatKeys.has(k) && typeof v === 'number' && Number.isInteger(v) ? `__float__${v}` : v), 2);
  return text.replace(/"__float__(-?\d+)"/g, '$1.0').replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** adapter_config.json for a config, with every field PEFT 0.21 writes. */
export function adapterConfigJson(config: LoraConfig): string {
  const out: Record<string, unknown> = {
    alora_invocation_tokens: null,
    alpha_pattern: config.alpha_pattern,
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: config.base_model_name_or_path,
    bias: 'none',
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: config.exclude_modules,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    kasa_config: null,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: config.lora_alpha,
    lora_bias: false,
    lora_dropout: config.lora_dropout,
    lora_ga_config: null,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    monteclora_config: null,
    peft_type: 'LORA',
    peft_version: PEFT_FORMAT_VERSION,
    qalora_group_size: 16,
    r: config.r,
    rank_pattern: config.rank_pattern,
    revision: null,
    target_modules: config.target_modules,
    target_parameters: null,
    task_type: 'CAUSAL_LM',
    trainable_token_indices: null,
    use_bdlora: null,
    use_dora: config.use_dora,
    use_qalora: false,
    use_rslora: config.use_rslora,
    velora_config: null,
  };
  return pythonJson(out, new Set(['lora_dropout']));
}

// ------------------------------------------------------------------ adapter_model.safetensors

type Part = 'lora_A' | 'lora_B' | 'magnitude';

/** Key endings each writer uses, longest first. */
const SUFFIXES: readonly [string, Part][] = [
  ['.lora_magnitude_vector.weight', 'magnitude'], // PEFT before the DoRA-layer refactor
  ['.lora_magnitude_vector', 'magnitude'],
  ['.magnitude', 'magnitude'], // torchtune
  ['.lora_A.weight', 'lora_A'],
  ['.lora_B.weight', 'lora_B'],
  ['.lora_a.weight', 'lora_A'], // torchtune
  ['.lora_b.weight', 'lora_B'],
];

interface ModuleKeys {
  lora_A?: string;
  lora_B?: string;
  magnitude?: string;
}

/** Groups a file's keys by module name (without the base_model.model. prefix). */
function groupKeys(file: string, names: readonly string[]): Map<string, ModuleKeys> {
  const out = new Map<string, ModuleKeys>();
  for (const key of names) {
    const hit = SUFFIXES.find(([s]) => key.endsWith(s));
    if (hit === undefined) {
      throw new AdapterError(file, `unexpected tensor ${JSON.stringify(key)} (a LoRA adapter holds lora_A, lora_B and, for DoRA, lora_magnitude_vector tensors)`);
    }
    const [suffix, part] = hit;
    let module = key.slice(0, key.length - suffix.length);
    if (module.startsWith(KEY_PREFIX)) module = module.slice(KEY_PREFIX.length);
    const entry = out.get(module) ?? {};
    const prev = entry[part];
    if (prev !== undefined) throw new AdapterError(file, `both ${JSON.stringify(prev)} and ${JSON.stringify(key)} give its ${part === 'magnitude' ? 'magnitude' : part}`, module);
    entry[part] = key;
    out.set(module, entry);
  }
  return out;
}

/** A Linear to adapt, by name and weight shape. */
export interface TargetShape {
  readonly name: string;
  readonly outFeatures: number;
  readonly inFeatures: number;
}

interface LoadPlan {
  readonly config: LoraConfig;
  readonly weights: SafetensorsFile;
  readonly keys: ReadonlyMap<string, ModuleKeys>;
}

/**
 * Checks an adapter directory against the Linear modules of a model (before any weight
 * is read): the config, and for every module the config selects its lora_A [r, in],
 * lora_B [out, r] and, with DoRA, magnitude [out], with r from rank_pattern.
 * Returns the open weights file; the caller closes it.
 */
function plan(dir: string, select: (config: LoraConfig) => TargetShape[]): LoadPlan {
  const config = readAdapterConfig(dir);
  const configFile = path.join(dir, ADAPTER_CONFIG_NAME);
  let targets: TargetShape[];
  try {
    targets = select(config);
  } catch (e) {
    if (e instanceof LoraConfigError) throw new AdapterError(configFile, e.message);
    throw e;
  }
  const file = path.join(dir, ADAPTER_WEIGHTS_NAME);
  if (!fs.existsSync(file)) {
    const other = ['adapter_model.bin', 'adapter_model.pt'].find((f) => fs.existsSync(path.join(dir, f)));
    throw new AdapterError(file, `missing${other ? ` (found ${other}: only safetensors adapters are supported)` : ''}`);
  }
  let weights: SafetensorsFile;
  try {
    weights = SafetensorsFile.open(file);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new AdapterError(file, e.message.startsWith(`${file}: `) ? e.message.slice(file.length + 2) : e.message);
    throw e;
  }
  try {
    const keys = groupKeys(file, weights.names());
    const wanted = new Set(targets.map((t) => t.name));
    for (const module of keys.keys()) {
      if (!wanted.has(module)) {
        throw new AdapterError(file, `the adapter has tensors for this module, but ${ADAPTER_CONFIG_NAME}'s target_modules do not select it in this model (another base model?)`, module);
      }
    }
    for (const t of targets) {
      const k = keys.get(t.name);
      if (k === undefined) {
        throw new AdapterError(file, `target_modules selects this module [${t.outFeatures}, ${t.inFeatures}], but the adapter has no tensors for it (another base model?)`, t.name);
      }
      const { r } = layerHyperparameters(config, t.name);
      const expect = (key: string | undefined, what: string, shape: readonly number[]) => {
        if (key === undefined) throw new AdapterError(file, `no ${what} tensor`, t.name);
        const info = weights.info(key);
        if (info.dtype !== 'f32' && info.dtype !== 'bf16' && info.dtype !== 'f16') {
          throw new AdapterError(file, `${key} is ${info.format}; adapter tensors must be F32, BF16 or F16`, t.name);
        }
        if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
          throw new AdapterError(file, `${key} has shape ${formatShape(info.shape)}, but the model's [${t.outFeatures}, ${t.inFeatures}] weight with r ${r} needs ${formatShape(shape)}`, t.name);
        }
      };
      expect(k.lora_A, 'lora_A', [r, t.inFeatures]);
      expect(k.lora_B, 'lora_B', [t.outFeatures, r]);
      if (config.use_dora) {
        if (k.magnitude === undefined) throw new AdapterError(file, `use_dora is true in ${ADAPTER_CONFIG_NAME} but the adapter has no lora_magnitude_vector for this module`, t.name);
        expect(k.magnitude, 'lora_magnitude_vector', [t.outFeatures]);
      } else if (k.magnitude !== undefined) {
        throw new AdapterError(file, `${k.magnitude} is a DoRA magnitude, but use_dora is false in ${ADAPTER_CONFIG_NAME}`, t.name);
      }
    }
    return { config, weights, keys };
  } catch (e) {
    weights.close();
    throw e;
  }
}

function modelTargets(model: Module): (config: LoraConfig) => TargetShape[] {
  return (config) =>
    LoraModel.targets(model, config).map(([name, l]) => ({ name, outFeatures: l.outFeatures, inFeatures: l.inFeatures }));
}

/** The Linear modules of a Llama-family model described by its config, with their weight shapes. */
export function llamaLinearShapes(c: LlamaConfig): TargetShape[] {
  const H = c.hiddenSize, I = c.intermediateSize, q = c.numAttentionHeads * c.headDim, kv = c.numKeyValueHeads * c.headDim;
  const out: TargetShape[] = [];
  const add = (name: string, o: number, i: number) => out.push({ name, outFeatures: o, inFeatures: i });
  for (let l = 0; l < c.numHiddenLayers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.self_attn.q_proj`, q, H);
    add(`${p}.self_attn.k_proj`, kv, H);
    add(`${p}.self_attn.v_proj`, kv, H);
    add(`${p}.self_attn.o_proj`, H, q);
    add(`${p}.mlp.gate_proj`, I, H);
    add(`${p}.mlp.up_proj`, I, H);
    add(`${p}.mlp.down_proj`, H, I);
  }
  if (!c.tieWordEmbeddings) add('lm_head', c.vocabSize, H);
  return out;
}

export interface AdapterCheck {
  readonly config: LoraConfig;
  /** The modules that get an adapter. */
  readonly modules: readonly string[];
}

/**
 * Validates an adapter against a list of Linear modules without loading any weights
 * (e.g. a Llama-3.1-8B adapter against llamaLinearShapes of its config.json).
 */
export function checkPeftAdapter(dir: string, linears: readonly TargetShape[]): AdapterCheck {
  let modules: string[] = [];
  const p = plan(dir, (config) => {
    const picked = linears.filter((t) => isTargeted(config, t.name, t.name === 'lm_head'));
    if (picked.length === 0) {
      throw new LoraConfigError(`target_modules ${JSON.stringify(config.target_modules)} match no module; Linear modules include ${linears.slice(0, 6).map((t) => t.name).join(', ')}`);
    }
    modules = picked.map((t) => t.name);
    return picked;
  });
  p.weights.close();
  return { config: p.config, modules };
}

export interface LoadAdapterOptions extends InjectOptions {
  /** Training-time dropout behaviour (not stored in PEFT's file; default 'finlora'). */
  readonly dropout_semantics?: LoraConfig['dropout_semantics'];
}

/**
 * Puts the adapter in `dir` onto `model` (PEFT's PeftModel.from_pretrained). Everything
 * is validated first; on any error the model is left as it was.
 */
export function loadPeftAdapter(dir: string, model: Module, opts: LoadAdapterOptions = {}): LoraModel {
  const p = plan(dir, modelTargets(model));
  const file = p.weights.path;
  let lm: LoraModel | null = null;
  try {
    const config = opts.dropout_semantics === undefined ? p.config : { ...p.config, dropout_semantics: opts.dropout_semantics };
    lm = LoraModel.inject(model, config, opts);
    for (const [name, layer] of lm.layers) {
      const keys = p.keys.get(name);
      if (keys === undefined) throw new AdapterError(file, 'no tensors', name);
      const parts: [string | undefined, Tensor][] = [
        [keys.lora_A, layer.lora_A.weight],
        [keys.lora_B, layer.lora_B.weight],
      ];
      const dora = layer.variant?.modules.get('lora_magnitude_vector');
      if (dora !== undefined) parts.push([keys.magnitude, dora.weight]);
      for (const [key, dst] of parts) {
        if (key === undefined) throw new AdapterError(file, 'missing tensor', name);
        scope(() => {
          try {
            assign(dst, p.weights.tensor(key, { device: dst.backend, dtype: 'f32' }));
          } catch (e) {
            if (e instanceof SafetensorsError) throw new AdapterError(file, e.message, name);
            throw e;
          }
        });
      }
      layer.invalidate();
    }
    const loaded = lm;
    lm = null;
    return loaded;
  } finally {
    lm?.unload();
    p.weights.close();
  }
}

// ------------------------------------------------------------------ saving

export interface SaveAdapterOptions {
  /** Written as base_model_name_or_path (default: the config's). */
  readonly baseModelNameOrPath?: string | null;
}

/** What saving needs from an adapter (a LoraModel is one). */
export interface SavableAdapter {
  readonly config: LoraConfig;
  readonly layers: ReadonlyMap<string, { namedTensors(): Iterable<[string, Tensor]> }>;
}

/** The tensors of an adapter under PEFT's keys (what adapter_model.safetensors holds). */
export function peftStateDict(lm: SavableAdapter): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [name, layer] of lm.layers) {
    for (const [k, t] of layer.namedTensors()) {
      // PEFT keeps the magnitude as lora_magnitude_vector.<adapter>.weight in memory and saves it without ".weight".
      const key = k === 'lora_magnitude_vector.weight' ? 'lora_magnitude_vector' : k;
      out.set(`${KEY_PREFIX}${name}.${key}`, t);
    }
  }
  return out;
}

/**
 * Writes `lm` as a PEFT adapter directory. A DoRA adapter without its magnitudes is
 * refused (PEFT would load it as a different model, silently). Atomic: see writeAdapterFiles.
 */
export function savePeftAdapter(dir: string, lm: SavableAdapter, opts: SaveAdapterOptions = {}): void {
  const config: LoraConfig = opts.baseModelNameOrPath === undefined ? lm.config : { ...lm.config, base_model_name_or_path: opts.baseModelNameOrPath };
  const tensors = peftStateDict(lm);
  for (const [name, layer] of lm.layers) {
    const m = tensors.get(`${KEY_PREFIX}${name}.lora_magnitude_vector`);
    if (config.use_dora && (m === undefined || m.isDisposed)) {
      throw new AdapterError(path.join(dir, ADAPTER_WEIGHTS_NAME), 'use_dora is set but the layer has no magnitude vector; refusing to save a DoRA adapter without its magnitudes', name);
    }
    if (!config.use_dora && m !== undefined) throw new AdapterError(path.join(dir, ADAPTER_WEIGHTS_NAME), 'the layer has a DoRA magnitude but use_dora is false', name);
    for (const t of layer.namedTensors()) if (t[1].isDisposed) throw new AdapterError(path.join(dir, ADAPTER_WEIGHTS_NAME), `${t[0]} was disposed`, name);
  }
  writeAdapterFiles(dir, adapterConfigJson(config), (file) => writeSafetensors(file, Object.fromEntries(tensors), { format: 'pt' }));
}

function fsyncPath(p: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(p, 'r');
    fs.fsyncSync(fd);
  } catch {
    // best effort: some filesystems refuse to fsync a directory
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

function writeTextDurably(file: string, text: string): void {
  const fd = fs.openSync(file, 'wx', 0o644);
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Mirrors a directory tree with hard links (copies where links are not possible). */
function linkTree(src: string, dst: string, skip: ReadonlySet<string>): void {
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (skip.has(e.name)) continue;
    const from = path.join(src, e.name), to = path.join(dst, e.name);
    if (e.isDirectory()) {
      fs.mkdirSync(to);
      linkTree(from, to, new Set());
    } else if (e.isSymbolicLink()) {
      fs.symlinkSync(fs.readlinkSync(from), to);
    } else {
      try {
        fs.linkSync(from, to);
      } catch {
        fs.copyFileSync(from, to);
      }
    }
  }
}

/**
 * Writes adapter_config.json and adapter_model.safetensors so that `dir` holds the old
 * adapter or the new one whenever the process stops:
 * - a new directory is written under a temporary name beside it and renamed into place;
 * - an existing directory whose adapter_config.json already has the new text (a
 *   training run saving again) only has its weights file replaced, atomically;
 * - otherwise the new directory is staged beside the old one, other files in the old
 *   one hard-linked into it, and the two are swapped by two renames. Between those two
 *   renames (microseconds) `dir` is absent while both complete versions exist beside it
 *   as .<name>.old-* and .<name>.new-*.
 */
export function writeAdapterFiles(dir: string, configText: string, writeWeights: (file: string) => void): void {
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  const base = path.basename(target);
  fs.mkdirSync(parent, { recursive: true });
  const exists = fs.existsSync(target);
  if (exists && !fs.statSync(target).isDirectory()) throw new AdapterError(dir, 'exists and is not a directory');
  if (exists) {
    const current = path.join(target, ADAPTER_CONFIG_NAME);
    if (fs.existsSync(current) && fs.readFileSync(current, 'utf8') === configText) {
      writeWeights(path.join(target, ADAPTER_WEIGHTS_NAME));
      return;
    }
  }
  const stage = fs.mkdtempSync(path.join(parent, `.${base}.new-`));
  try {
    writeTextDurably(path.join(stage, ADAPTER_CONFIG_NAME), configText);
    writeWeights(path.join(stage, ADAPTER_WEIGHTS_NAME));
    if (exists) linkTree(target, stage, new Set([ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]));
    fsyncPath(stage);
    if (!exists) {
      fs.renameSync(stage, target);
    } else {
      const old = `${stage.replace(/\.new-([^/]*)$/, '.old-$1')}`;
      fs.renameSync(target, old);
      fs.renameSync(stage, target);
      fs.rmSync(old, { recursive: true, force: true });
    }
    fsyncPath(parent);
  } catch (e) {
    fs.rmSync(stage, { recursive: true, force: true });
    if (e instanceof AdapterError || e instanceof SafetensorsError) throw e;
    throw new AdapterError(dir, `cannot write the adapter: ${e instanceof Error ? e.message : String(e)}`);
  }
}
