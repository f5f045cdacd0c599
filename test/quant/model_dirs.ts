// Model directories for the quantized-loading tests, written on the fly: a Llama fixture
// saved as transformers saves a bitsandbytes-quantized model (the projections in
// bitsandbytes' state-dict layout, config.json with a quantization_config), sharded or
// not, with a hook to damage tensors; and a random float Llama of a chosen shape.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { llamaLayout, type LlamaShape } from '../../bench/util.js';
import { type HostTensor, writeSafetensors } from '../../src/io/safetensors.js';
import { WEIGHTS_INDEX_NAME } from '../../src/models/checkpoint.js';
import type { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { Linear } from '../../src/nn/linear.js';
import { bnbStateDict } from '../../src/quant/checkpoint.js';
import { Rng } from '../../src/tensor/rng.js';
import type { DType } from '../../src/tensor/dtype.js';
import type { Tensor } from '../../src/tensor/tensor.js';

export type Entries = Record<string, Tensor | HostTensor>;

/** transformers' quantization_config for a model loaded with load_in_8bit / load_in_4bit (nf4, double quantized). */
function quantizationConfig(format: 'int8' | 'nf4'): Record<string, unknown> {
  return format === 'int8'
    ? { quant_method: 'bitsandbytes', load_in_8bit: true, load_in_4bit: false, llm_int8_threshold: 6.0, llm_int8_skip_modules: null }
    : { quant_method: 'bitsandbytes', load_in_8bit: false, load_in_4bit: true, bnb_4bit_quant_type: 'nf4', bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: 'float32', bnb_4bit_quant_storage: 'uint8' };
}

export interface BnbDirOptions {
  /** Edits the tensors before they are written (damage for the bad-input tests). */
  readonly edit?: (e: Entries) => void;
  /** Writes two shards with an index instead of model.safetensors. */
  readonly sharded?: boolean;
}

/**
 * Writes `model` (its projections already quantized, e.g. by quantizeModel) as
 * save_pretrained writes a bitsandbytes model: every quantized Linear as bnbStateDict
 * lays it out, everything else as it is. `configDir`'s config.json is copied with a
 * quantization_config added.
 */
export function writeBnbModel(dir: string, model: LlamaForCausalLM, configDir: string, format: 'int8' | 'nf4', opts: BnbDirOptions = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  const quantized = new Map<string, Linear>();
  for (const [name, m] of model.namedModules()) if (m instanceof Linear && m.quantized !== null) quantized.set(`${name}.weight`, m);
  const entries: Entries = {};
  for (const [name, t] of model.namedParameters()) {
    const q = quantized.get(name)?.quantized;
    if (q === undefined || q === null) entries[name] = t;
    else Object.assign(entries, bnbStateDict(name.slice(0, -'.weight'.length), q));
  }
  opts.edit?.(entries);
  const config = JSON.parse(fs.readFileSync(path.join(configDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, quantization_config: quantizationConfig(format) }, null, 2));
  if (!opts.sharded) {
    writeSafetensors(path.join(dir, 'model.safetensors'), entries, { format: 'pt' });
    return;
  }
  // Split so that a module's tensors may land in different shards.
  const names = Object.keys(entries).sort();
  const halves = [names.slice(0, Math.ceil(names.length / 2)), names.slice(Math.ceil(names.length / 2))];
  const weightMap: Record<string, string> = {};
  halves.forEach((part, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeSafetensors(path.join(dir, file), Object.fromEntries(part.map((n) => [n, entries[n]])), { format: 'pt' });
    for (const n of part) weightMap[n] = file;
  });
  fs.writeFileSync(path.join(dir, WEIGHTS_INDEX_NAME), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}

export { llamaLayout, type LlamaShape };

export function llamaConfigJson(s: LlamaShape, dtype: 'float32' | 'bfloat16'): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: s.hidden, intermediate_size: s.intermediate,
    num_hidden_layers: s.layers, num_attention_heads: s.heads, num_key_value_heads: s.kvHeads, vocab_size: s.vocab,
    max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, torch_dtype: dtype,
  };
}

/** A random Llama model directory (norms 1, other weights N(0, 0.02²), as transformers initialises). */
export function writeRandomLlama(dir: string, s: LlamaShape, dtype: DType & ('f32' | 'bf16'), seed = 1): void {
  fs.mkdirSync(dir, { recursive: true });
  const rng = new Rng(seed);
  const entries: Entries = {};
  for (const [name, shape] of llamaLayout(s)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (name.endsWith('norm.weight')) data.fill(1);
    else for (let i = 0; i < n; i++) data[i] = rng.normal() * 0.02;
    entries[name] = { dtype, shape, data };
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), entries, { format: 'pt' });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(llamaConfigJson(s, dtype === 'f32' ? 'float32' : 'bfloat16'), null, 2));
}
