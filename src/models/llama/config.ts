// The configuration of a Llama-family causal LM, read from a Hugging Face config.json.
//
// Follows the files transformers writes for LlamaForCausalLM (Llama 2, 3, 3.1, 3.2),
// MistralForCausalLM and Qwen2ForCausalLM, in both generations of the format:
//   4.x: "rope_theta" + "rope_scaling" ({"rope_type" | "type", "factor", ...}), "torch_dtype";
//   5.x: "rope_parameters" ({"rope_type", "rope_theta", "factor", ...}), "dtype".
// Defaults for absent keys are transformers' class defaults for the architecture.
//
// Sliding-window attention (Mistral v0.1, Qwen2 with use_sliding_window) is not
// implemented: the window is recorded, and the model refuses a sequence longer than
// it. Within the window, windowed attention is plain causal attention, so every
// sequence up to the window length gives the same result as transformers.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DType } from '../../tensor/dtype.js';

export const ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const;
export type Architecture = (typeof ARCHITECTURES)[number];

const MODEL_TYPES: Readonly<Record<string, Architecture>> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

/** Rotary position embedding: base frequency and the scaling of transformers' modeling_rope_utils. */
export type RopeScaling =
  | { readonly type: 'default' }
  /** Positions divided by factor (inv_freq / factor). */
  | { readonly type: 'linear'; readonly factor: number }
  /** Llama 3.1's band-wise rescaling of the frequencies. */
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositionEmbeddings: number;
    };

export interface LlamaConfig {
  readonly architecture: Architecture;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numHiddenLayers: number;
  readonly numAttentionHeads: number;
  readonly numKeyValueHeads: number;
  readonly headDim: number;
  readonly rmsNormEps: number;
  readonly maxPositionEmbeddings: number;
  readonly ropeTheta: number;
  readonly ropeScaling: RopeScaling;
  /** Bias on q_proj, k_proj, v_proj (Qwen2; Llama's attention_bias). */
  readonly qkvBias: boolean;
  /** Bias on o_proj (Llama's attention_bias only). */
  readonly oBias: boolean;
  /** Bias on gate_proj, up_proj, down_proj (Llama's mlp_bias). */
  readonly mlpBias: boolean;
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** The dtype the checkpoint declares (torch_dtype / dtype), or null when it says none. */
  readonly dtype: DType | null;
  /** Attention window of some layers, or null when every layer attends to the whole sequence. */
  readonly slidingWindow: number | null;
}

/** A config.json that cannot be used; the message names the file and the key. */
export class ConfigError extends Error {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads and parses `<dir>/config.json`. */
export function readLlamaConfig(dir: string): LlamaConfig {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = isObject(e) && typeof e.code === 'string' ? e.code : '';
    throw new ConfigError(file, code === 'ENOENT' ? 'missing (a model directory needs config.json)' : `cannot read: ${e instanceof Error ? e.message : String(e)}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, `not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  return parseLlamaConfig(raw, file);
}

/** Validates a parsed config.json; `file` names it in messages. */
export function parseLlamaConfig(raw: unknown, file = 'config.json'): LlamaConfig {
  if (!isObject(raw)) throw new ConfigError(file, 'not a JSON object');
  const fail = (msg: string): never => {
    throw new ConfigError(file, msg);
  };
  const architecture = detectArchitecture(raw, fail);
  const isLlama = architecture === 'LlamaForCausalLM';
  const isQwen2 = architecture === 'Qwen2ForCausalLM';

  const int = (key: string, def?: number): number => {
    const v = raw[key] ?? def;
    if (v === undefined) return fail(`"${key}" is missing`);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) return fail(`"${key}" must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const bool = (key: string, def: boolean): boolean => {
    const v = raw[key] ?? def;
    if (typeof v !== 'boolean') return fail(`"${key}" must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  const tokenId = (key: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) return fail(`"${key}" must be a token id (a non-negative integer), got ${JSON.stringify(v)}`);
    return v;
  };
  const optionalTokenId = (key: string): number | null => (raw[key] === undefined || raw[key] === null ? null : tokenId(key, raw[key]));

  const hiddenSize = int('hidden_size');
  const numAttentionHeads = int('num_attention_heads');
  const numKeyValueHeads = raw.num_key_value_heads === null ? numAttentionHeads : int('num_key_value_heads', numAttentionHeads);
  const explicitHeadDim = raw.head_dim === undefined || raw.head_dim === null ? null : int('head_dim');
  if (explicitHeadDim === null && hiddenSize % numAttentionHeads !== 0) {
    fail(`"num_attention_heads" (${numAttentionHeads}) does not divide "hidden_size" (${hiddenSize}) and there is no "head_dim"`);
  }
  const headDim = explicitHeadDim ?? hiddenSize / numAttentionHeads;
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    fail(`"num_key_value_heads" (${numKeyValueHeads}) does not divide "num_attention_heads" (${numAttentionHeads})`);
  }
  if (headDim % 2 !== 0) fail(`the head dimension ${headDim} ("head_dim" or "hidden_size" / "num_attention_heads") must be even for rotary embeddings`);

  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu') fail(`"hidden_act" ${JSON.stringify(act)} is not supported (Llama-family models use "silu")`);

  const eps = raw.rms_norm_eps ?? 1e-6;
  if (typeof eps !== 'number' || !(eps > 0) || !Number.isFinite(eps)) fail(`"rms_norm_eps" must be a positive number, got ${JSON.stringify(eps)}`);

  const eos = raw.eos_token_id;
  const eosTokenIds = eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos.map((v) => tokenId('eos_token_id', v)) : [tokenId('eos_token_id', eos)];

  const attentionBias = isLlama ? bool('attention_bias', false) : false;
  const { theta, scaling } = parseRope(raw, fail);

  return {
    architecture,
    vocabSize: int('vocab_size'),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numHiddenLayers: int('num_hidden_layers'),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps: typeof eps === 'number' ? eps : 1e-6,
    maxPositionEmbeddings: int('max_position_embeddings', architecture === 'MistralForCausalLM' ? 4096 * 32 : isQwen2 ? 32768 : 2048),
    ropeTheta: theta,
    ropeScaling: scaling,
    qkvBias: isQwen2 || attentionBias,
    oBias: attentionBias,
    mlpBias: isLlama ? bool('mlp_bias', false) : false,
    tieWordEmbeddings: bool('tie_word_embeddings', false),
    bosTokenId: optionalTokenId('bos_token_id'),
    eosTokenIds,
    padTokenId: optionalTokenId('pad_token_id'),
    dtype: parseDtype(raw, fail),
    slidingWindow: parseSlidingWindow(raw, architecture, fail),
  };
}

function detectArchitecture(raw: Json, fail: (msg: string) => never): Architecture {
  const archs = raw.architectures;
  const supported = ARCHITECTURES.join(', ');
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || archs.length === 0 || !archs.every((a) => typeof a === 'string')) {
      return fail(`"architectures" must be a non-empty list of names, got ${JSON.stringify(archs)}`);
    }
    const found = archs.find((a): a is Architecture => (ARCHITECTURES as readonly string[]).includes(a));
    if (found === undefined) return fail(`unsupported architecture ${archs.map((a) => `'${a}'`).join(', ')} (finlora supports ${supported})`);
    return found;
  }
  const type = raw.model_type;
  if (typeof type === 'string' && Object.prototype.hasOwnProperty.call(MODEL_TYPES, type)) return MODEL_TYPES[type];
  return fail(`unsupported architecture: no "architectures" and model_type ${JSON.stringify(type ?? null)} (finlora supports ${supported})`);
}

function parseRope(raw: Json, fail: (msg: string) => never): { theta: number; scaling: RopeScaling } {
  // 5.x folds the base into rope_parameters; 4.x keeps rope_theta beside rope_scaling.
  let key: string;
  let params: Json;
  let thetaKey = 'rope_theta';
  const p5 = raw.rope_parameters;
  if (p5 !== undefined && p5 !== null) {
    if (!isObject(p5)) return fail(`"rope_parameters" must be an object, got ${JSON.stringify(p5)}`);
    if (p5.rope_type === undefined && p5.type === undefined && p5.rope_theta === undefined && Object.values(p5).some(isObject)) {
      return fail(`"rope_parameters" holds per-layer-type parameters (${Object.keys(p5).join(', ')}), which these architectures do not use`);
    }
    key = 'rope_parameters';
    params = { ...p5 };
    if (params.rope_theta === undefined) params.rope_theta = raw.rope_theta;
    else thetaKey = 'rope_parameters.rope_theta';
  } else {
    const s = raw.rope_scaling;
    if (s !== undefined && s !== null && !isObject(s)) return fail(`"rope_scaling" must be an object or null, got ${JSON.stringify(s)}`);
    key = 'rope_scaling';
    params = { ...(s ?? {}), rope_theta: raw.rope_theta };
  }
  const theta = params.rope_theta ?? 10000;
  if (typeof theta !== 'number' || !(theta > 0) || !Number.isFinite(theta)) return fail(`"${thetaKey}" must be a positive number, got ${JSON.stringify(theta)}`);

  const partial = raw.partial_rotary_factor ?? params.partial_rotary_factor ?? 1;
  if (partial !== 1) return fail(`"partial_rotary_factor" ${JSON.stringify(partial)} is not supported (only full rotary embeddings)`);

  const type = params.rope_type ?? params.type ?? 'default';
  const num = (name: string, def?: number): number => {
    const v = params[name] ?? def;
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) return fail(`"${key}.${name}" must be a positive number, got ${JSON.stringify(v ?? null)}`);
    return v;
  };
  switch (type) {
    case 'default':
      return { theta, scaling: { type: 'default' } };
    case 'linear':
      return { theta, scaling: { type: 'linear', factor: num('factor') } };
    case 'llama3': {
      const scaling = {
        type: 'llama3' as const,
        factor: num('factor'),
        lowFreqFactor: num('low_freq_factor'),
        highFreqFactor: num('high_freq_factor'),
        originalMaxPositionEmbeddings: num('original_max_position_embeddings'),
      };
      if (!(scaling.highFreqFactor > scaling.lowFreqFactor)) {
        return fail(`"${key}.high_freq_factor" (${scaling.highFreqFactor}) must exceed "${key}.low_freq_factor" (${scaling.lowFreqFactor})`);
      }
      return { theta, scaling };
    }
    default:
      return fail(`"${key}" rope type ${JSON.stringify(type)} is not supported (finlora supports default, linear, llama3)`);
  }
}

const DTYPE_NAMES: Readonly<Record<string, DType>> = { float32: 'f32', bfloat16: 'bf16', float16: 'f16' };

function parseDtype(raw: Json, fail: (msg: string) => never): DType | null {
  const key = raw.dtype !== undefined && raw.dtype !== null ? 'dtype' : 'torch_dtype';
  const v = raw[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string') return fail(`"${key}" must be a string, got ${JSON.stringify(v)}`);
  const name = v.replace(/^torch\./, '');
  if (!Object.prototype.hasOwnProperty.call(DTYPE_NAMES, name)) return fail(`"${key}" ${JSON.stringify(v)} is not supported (float32, bfloat16, float16)`);
  return DTYPE_NAMES[name];
}

function parseSlidingWindow(raw: Json, architecture: Architecture, fail: (msg: string) => never): number | null {
  const window = raw.sliding_window;
  if (architecture === 'LlamaForCausalLM' || window === undefined || window === null) return null;
  if (typeof window !== 'number' || !Number.isSafeInteger(window) || window <= 0) return fail(`"sliding_window" must be a positive integer or null, got ${JSON.stringify(window)}`);
  if (architecture === 'MistralForCausalLM') return window;
  // Qwen2 windows only layers listed as "sliding_attention" (5.x), or, in 4.x files,
  // layers from max_window_layers on, and only with use_sliding_window.
  if (raw.use_sliding_window !== true) return null;
  const types = raw.layer_types;
  if (Array.isArray(types)) return types.includes('sliding_attention') ? window : null;
  const layers = raw.num_hidden_layers;
  const first = raw.max_window_layers ?? 28;
  return typeof layers === 'number' && typeof first === 'number' && first >= layers ? null : window;
}
