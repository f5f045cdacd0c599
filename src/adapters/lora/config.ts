// LoRA / DoRA configuration with the names and the matching rules of Hugging Face
// PEFT's LoraConfig (PEFT 0.21): which modules get an adapter (target_modules,
// exclude_modules), their rank and alpha (r, lora_alpha, rank_pattern, alpha_pattern),
// the scaling (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA), dropout and DoRA.
//
// Matching, as PEFT's check_target_module_exists and get_pattern_key do it, against a
// module's dotted name in the model (model.layers.0.self_attn.q_proj):
//   target_modules as a list: a name matches an entry when it equals it or ends with
//     "." + entry;
//   target_modules as a string: a regular expression that must match the WHOLE name
//     (Python's re.fullmatch); "all-linear" selects every Linear but the output head;
//   rank_pattern / alpha_pattern keys: the first key k for which the name matches
//     (.*\.)?(k)$ gives the module's r / lora_alpha.
// Patterns are Python regular expressions; the common subset (and named groups
// (?P<name>...), rewritten) is the same in JavaScript.
//
// finlora's defaults follow FinLoRA where PEFT leaves a choice to the caller: lora_alpha
// 16 and target_modules q_proj, k_proj, v_proj. An adapter_config.json that omits a key
// takes PEFT's default instead (peft.ts), since that is what PEFT loads it as.

/** Where dropout acts in a DoRA layer while training (see dora.ts); both agree in eval mode. */
export type DropoutSemantics = 'finlora' | 'peft';

export interface LoraConfig {
  readonly r: number;
  readonly lora_alpha: number;
  readonly lora_dropout: number;
  readonly target_modules: readonly string[] | string;
  readonly exclude_modules: readonly string[] | string | null;
  readonly use_rslora: boolean;
  readonly use_dora: boolean;
  /** Module-name pattern -> r. */
  readonly rank_pattern: Readonly<Record<string, number>>;
  /** Module-name pattern -> lora_alpha. */
  readonly alpha_pattern: Readonly<Record<string, number>>;
  /** Only "none": no bias is trained. */
  readonly bias: 'none';
  /**
   * 'finlora' (default): dropout on the LoRA branch's input only, y = b + g ⊙ (W·x + s·B·A·x̃),
   * reusing the base output. 'peft': PEFT's training forward with dropout > 0,
   * y = W·x + b + (g − 1) ⊙ W·x̃ + g ⊙ s·B·A·x̃ (a second product with W).
   */
  readonly dropout_semantics: DropoutSemantics;
  readonly base_model_name_or_path: string | null;
}

/** What a caller passes: any subset of the fields, the rest take their defaults. */
export type LoraConfigInput = { readonly [K in keyof LoraConfig]?: LoraConfig[K] };

export const LORA_DEFAULTS: LoraConfig = {
  r: 8,
  lora_alpha: 16,
  lora_dropout: 0,
  target_modules: ['q_proj', 'k_proj', 'v_proj'],
  exclude_modules: null,
  use_rslora: false,
  use_dora: false,
  rank_pattern: {},
  alpha_pattern: {},
  bias: 'none',
  dropout_semantics: 'finlora',
  base_model_name_or_path: null,
};

/** PEFT's shorthand for every linear layer except the output head. */
export const ALL_LINEAR = 'all-linear';

/** An invalid LoRA configuration; the message names the key. */
export class LoraConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LoraConfigError';
  }
}

function fail(msg: string): never {
  throw new LoraConfigError(msg);
}

/** A Python regular expression as a JavaScript one anchored at both ends (re.fullmatch). */
export function pythonRegex(pattern: string, anchor: 'full' | 'suffix', what: string): RegExp {
  const js = pattern.replace(/\(\?P</g, '(?<').replace(/\(\?P=(\w+)\)/g, '\\k<$1>');
  try {
    return new RegExp(anchor === 'full' ? `^(?:${js})$` : `^(.*\\.)?(${js})$`);
  } catch (e) {
    return fail(`${what}: ${JSON.stringify(pattern)} is not a valid regular expression (${e instanceof Error ? e.message : String(e)})`);
  }
}

function checkModuleList(v: unknown, key: string, allowNull: boolean): readonly string[] | string | null {
  if (v === null && allowNull) return null;
  if (typeof v === 'string') {
    if (v.length === 0) fail(`${key} is an empty string`);
    if (v.toLowerCase() !== ALL_LINEAR) pythonRegex(v, 'full', key);
    return v;
  }
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string' && s.length > 0)) {
    fail(`${key} must be a list of module names or a regular expression string, got ${JSON.stringify(v)}`);
  }
  if (v.length === 0 && !allowNull) fail(`${key} is an empty list: no module would get an adapter`);
  return [...(v as string[])];
}

function checkPattern(v: unknown, key: string, rank: boolean): Record<string, number> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`${key} must be an object of pattern: number, got ${JSON.stringify(v)}`);
  const out: [string, number][] = [];
  for (const [k, n] of Object.entries(v)) {
    pythonRegex(k, 'suffix', `${key} key`);
    if (typeof n !== 'number' || !Number.isFinite(n) || (rank && (!Number.isInteger(n) || n <= 0))) {
      fail(`${key}[${JSON.stringify(k)}] must be ${rank ? 'a positive integer' : 'a finite number'}, got ${JSON.stringify(n)}`);
    }
    out.push([k, n]);
  }
  return Object.fromEntries(out);
}

/** Fills defaults and validates; throws LoraConfigError naming the first bad key. */
export function loraConfig(input: LoraConfigInput = {}): LoraConfig {
  const c = { ...LORA_DEFAULTS, ...Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)) };
  if (!Number.isInteger(c.r) || c.r <= 0) fail(`r must be a positive integer, got ${JSON.stringify(c.r)}`);
  if (typeof c.lora_alpha !== 'number' || !Number.isFinite(c.lora_alpha)) fail(`lora_alpha must be a finite number, got ${JSON.stringify(c.lora_alpha)}`);
  if (typeof c.lora_dropout !== 'number' || !(c.lora_dropout >= 0 && c.lora_dropout < 1)) fail(`lora_dropout must be in [0, 1), got ${JSON.stringify(c.lora_dropout)}`);
  for (const k of ['use_rslora', 'use_dora'] as const) if (typeof c[k] !== 'boolean') fail(`${k} must be true or false, got ${JSON.stringify(c[k])}`);
  if (c.bias !== 'none') fail(`bias ${JSON.stringify(c.bias)} is not supported (only "none": finlora trains no biases)`);
  if (c.dropout_semantics !== 'finlora' && c.dropout_semantics !== 'peft') fail(`dropout_semantics must be "finlora" or "peft", got ${JSON.stringify(c.dropout_semantics)}`);
  if (c.base_model_name_or_path !== null && typeof c.base_model_name_or_path !== 'string') fail('base_model_name_or_path must be a string or null');
  return {
    ...c,
    target_modules: checkModuleList(c.target_modules, 'target_modules', false) ?? fail('target_modules is required'),
    exclude_modules: checkModuleList(c.exclude_modules, 'exclude_modules', true),
    rank_pattern: checkPattern(c.rank_pattern, 'rank_pattern', true),
    alpha_pattern: checkPattern(c.alpha_pattern, 'alpha_pattern', false),
  };
}

function listMatches(list: readonly string[], name: string): boolean {
  return list.some((t) => name === t || name.endsWith(`.${t}`));
}

/**
 * Whether PEFT would put an adapter on the module called `name`. "all-linear" selects
 * Linear modules (`isLinear`) except the output head (PEFT skips the model's output
 * embeddings).
 */
export function isTargeted(config: LoraConfig, name: string, isOutputHead = false, isLinear = true): boolean {
  const ex = config.exclude_modules;
  if (ex !== null && (typeof ex === 'string' ? pythonRegex(ex, 'full', 'exclude_modules').test(name) : listMatches(ex, name))) return false;
  const t = config.target_modules;
  if (typeof t === 'string') {
    if (t.toLowerCase() === ALL_LINEAR) return isLinear && !isOutputHead;
    return pythonRegex(t, 'full', 'target_modules').test(name);
  }
  return listMatches(t, name);
}

/** PEFT's get_pattern_key: the first pattern key that matches the end of `name`, or null. */
export function patternKey(keys: readonly string[], name: string): string | null {
  return keys.find((k) => pythonRegex(k, 'suffix', 'pattern key').test(name)) ?? null;
}

export interface LayerHyperparameters {
  readonly r: number;
  readonly lora_alpha: number;
  /** s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023). */
  readonly scaling: number;
}

/** r, lora_alpha and the scaling of the module called `name`. */
export function layerHyperparameters(config: LoraConfig, name: string): LayerHyperparameters {
  const rk = patternKey(Object.keys(config.rank_pattern), name);
  const ak = patternKey(Object.keys(config.alpha_pattern), name);
  const r = rk === null ? config.r : config.rank_pattern[rk];
  const alpha = ak === null ? config.lora_alpha : config.alpha_pattern[ak];
  return { r, lora_alpha: alpha, scaling: config.use_rslora ? alpha / Math.sqrt(r) : alpha / r };
}
