// Full-parameter training of a Llama-architecture model and its output: a Hugging Face
// model directory that transformers' LlamaForCausalLM.from_pretrained (and finlora)
// loads as it loads a downloaded model.
//
// - llamaConfigJson writes config.json as transformers 4.x does for LlamaConfig
//   (rope_theta beside rope_scaling null, torch_dtype), with the tokenizer's
//   bos/eos/pad ids; the model is built from that same object through
//   parseLlamaConfig, so what trains is what a later load reads.
// - initLlamaWeights is transformers' LlamaPreTrainedModel._init_weights: every Linear
//   and Embedding weight N(0, initializer_range²), every RMSNorm weight 1.
// - modelDirTarget trains every parameter (f32) and saves config.json,
//   generation_config.json, model.safetensors (one file, f32 or bf16, rounded to
//   nearest even) and the tokenizer files, so the directory is complete.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { noGrad } from '../autograd/tape.js';
import { writeSafetensors } from '../io/safetensors.js';
import type { LlamaForCausalLM } from '../models/llama/model.js';
import { full, randn } from '../ops/creation.js';
import { assign } from '../ops/inplace.js';
import { cast } from '../ops/view.js';
import { Rng } from '../tensor/rng.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import type { Architecture } from './pretrain_config.js';
import { fullParameterTarget, type TrainTarget } from './target.js';

/** Tokenizer files copied into a model directory when present. */
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja'] as const;

const TORCH_DTYPES = { f32: 'float32', bf16: 'bfloat16' } as const;

export interface SpecialIds {
  readonly bos: number | null;
  readonly eos: number;
  readonly pad: number | null;
}

/** config.json of a LlamaForCausalLM with this architecture and vocabulary. */
export function llamaConfigJson(a: Architecture, vocabSize: number, ids: SpecialIds, dtype: 'f32' | 'bf16', initializerRange: number): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: a.hiddenSize,
    intermediate_size: a.intermediateSize,
    num_hidden_layers: a.numHiddenLayers,
    num_attention_heads: a.numAttentionHeads,
    num_key_value_heads: a.numKeyValueHeads,
    head_dim: a.hiddenSize / a.numAttentionHeads,
    hidden_act: 'silu',
    max_position_embeddings: a.maxPositionEmbeddings,
    rms_norm_eps: a.rmsNormEps,
    rope_theta: a.ropeTheta,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    pretraining_tp: 1,
    tie_word_embeddings: a.tieWordEmbeddings,
    vocab_size: vocabSize,
    bos_token_id: ids.bos,
    eos_token_id: ids.eos,
    pad_token_id: ids.pad,
    initializer_range: initializerRange,
    use_cache: true,
    torch_dtype: TORCH_DTYPES[dtype],
  };
}

/** generation_config.json: the ids generation starts, stops and pads with. */
export function generationConfigJson(ids: SpecialIds): Record<string, unknown> {
  return { bos_token_id: ids.bos, eos_token_id: ids.eos, pad_token_id: ids.pad };
}

/** transformers' _init_weights for Llama: N(0, std²) for Linear and Embedding weights, 1 for RMSNorm. */
export function initLlamaWeights(model: LlamaForCausalLM, seed: number, std: number): void {
  const rng = new Rng(seed);
  noGrad(() => {
    for (const [name, p] of model.namedParameters()) {
      scope(() => assign(p, name.endsWith('norm.weight') ? full(p.shape, 1, { device: p.backend }) : randn(p.shape, rng, { std, device: p.backend })));
      p.name = name;
    }
  });
}

export interface ModelDirOptions {
  /** config.json's content; torch_dtype is set to the written dtype. */
  readonly configJson: Record<string, unknown>;
  readonly generationConfig: Record<string, unknown>;
  /** Where the tokenizer files are copied from. */
  readonly tokenizerDir: string;
  readonly dtype: 'f32' | 'bf16';
}

/** Writes the model directory's files into dir (which it creates). */
export function writeModelDir(dir: string, params: readonly (readonly [string, Tensor])[], o: ModelDirOptions): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify({ ...o.configJson, torch_dtype: TORCH_DTYPES[o.dtype] }, null, 2)}\n`);
  fs.writeFileSync(path.join(dir, 'generation_config.json'), `${JSON.stringify(o.generationConfig, null, 2)}\n`);
  noGrad(() =>
    scope(() => {
      const record: Record<string, Tensor> = {};
      for (const [name, t] of params) record[name] = o.dtype === 'f32' ? t : cast(t, o.dtype);
      writeSafetensors(path.join(dir, 'model.safetensors'), record, { format: 'pt' });
    }),
  );
  let copied = 0;
  for (const f of TOKENIZER_FILES) {
    const from = path.join(o.tokenizerDir, f);
    if (!fs.existsSync(from)) continue;
    fs.copyFileSync(from, path.join(dir, f));
    copied++;
  }
  if (copied === 0) throw new Error(`${o.tokenizerDir} holds no tokenizer files to copy into the model directory`);
}

/** Every parameter of the model trains; the result is saved as a model directory. */
export function modelDirTarget(model: LlamaForCausalLM, o: ModelDirOptions): TrainTarget {
  const named = [...model.namedParameters()];
  return { ...fullParameterTarget(named), save: (dir) => writeModelDir(dir, named, o) };
}
