// config.json parsing: the 4.x layout (rope_theta + rope_scaling, torch_dtype) and the
// 5.x layout (rope_parameters, dtype) of the same model give the same config; per-
// architecture defaults; and every validation error names the file and the key.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { ConfigError, parseLlamaConfig, readLlamaConfig } from '../../src/models/llama/config.js';

const FIXTURES = fileURLToDir('../../../test/fixtures/models/');
function fileURLToDir(rel: string): string {
  return new URL(rel, import.meta.url).pathname;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-config-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

// Llama-3.2-1B's config.json as transformers 4.45 wrote it.
const LLAMA_32_V4 = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.45.0.dev0',
  use_cache: true,
  vocab_size: 128256,
};

// The same model in the layout transformers 5.x writes.
function toV5(v4: Record<string, unknown>): Record<string, unknown> {
  const { rope_scaling: scaling, rope_theta: theta, torch_dtype: dtype, ...rest } = v4;
  const scalingObj = typeof scaling === 'object' && scaling !== null ? scaling : { rope_type: 'default' };
  return { ...rest, dtype, rope_parameters: { ...scalingObj, rope_theta: theta }, transformers_version: '5.17.0' };
}

test('Llama 3.2 in the 4.x layout', () => {
  const c = parseLlamaConfig(LLAMA_32_V4);
  assert.equal(c.architecture, 'LlamaForCausalLM');
  assert.equal(c.hiddenSize, 2048);
  assert.equal(c.numAttentionHeads, 32);
  assert.equal(c.numKeyValueHeads, 8);
  assert.equal(c.headDim, 64);
  assert.equal(c.intermediateSize, 8192);
  assert.equal(c.vocabSize, 128256);
  assert.equal(c.numHiddenLayers, 16);
  assert.equal(c.rmsNormEps, 1e-5);
  assert.equal(c.ropeTheta, 500000);
  assert.deepEqual(c.ropeScaling, { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  assert.equal(c.tieWordEmbeddings, true);
  assert.equal(c.dtype, 'bf16');
  assert.equal(c.bosTokenId, 128000);
  assert.deepEqual(c.eosTokenIds, [128001]);
  assert.equal(c.padTokenId, null);
  assert.equal(c.qkvBias, false);
  assert.equal(c.oBias, false);
  assert.equal(c.slidingWindow, null);
});

test('the 5.x layout (rope_parameters, dtype) parses to the same config', () => {
  assert.deepEqual(parseLlamaConfig(toV5(LLAMA_32_V4)), parseLlamaConfig(LLAMA_32_V4));
});

test('Llama 2: default rope base, no scaling, full multi-head attention, float16, head_dim from hidden/heads', () => {
  const c = parseLlamaConfig({
    architectures: ['LlamaForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096,
    intermediate_size: 11008, max_position_embeddings: 4096, model_type: 'llama', num_attention_heads: 32,
    num_hidden_layers: 32, num_key_value_heads: 32, pretraining_tp: 1, rms_norm_eps: 1e-5, rope_scaling: null,
    tie_word_embeddings: false, torch_dtype: 'float16', vocab_size: 32000,
  });
  assert.equal(c.ropeTheta, 10000);
  assert.deepEqual(c.ropeScaling, { type: 'default' });
  assert.equal(c.headDim, 128);
  assert.equal(c.numKeyValueHeads, 32);
  assert.equal(c.dtype, 'f16');
  assert.equal(c.tieWordEmbeddings, false);
});

test('Llama 3.1 Instruct: a list of eos ids; num_key_value_heads defaults to the head count', () => {
  const { num_key_value_heads: _, ...rest } = LLAMA_32_V4;
  const c = parseLlamaConfig({ ...rest, eos_token_id: [128001, 128008, 128009] });
  assert.deepEqual(c.eosTokenIds, [128001, 128008, 128009]);
  assert.equal(c.numKeyValueHeads, 32);
});

test('old-style rope_scaling {"type": "linear"} and Llama attention_bias / mlp_bias', () => {
  const c = parseLlamaConfig({ ...LLAMA_32_V4, rope_scaling: { type: 'linear', factor: 2 }, attention_bias: true, mlp_bias: true });
  assert.deepEqual(c.ropeScaling, { type: 'linear', factor: 2 });
  assert.equal(c.qkvBias, true);
  assert.equal(c.oBias, true);
  assert.equal(c.mlpBias, true);
});

const MISTRAL_V01 = {
  architectures: ['MistralForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096,
  intermediate_size: 14336, max_position_embeddings: 32768, model_type: 'mistral', num_attention_heads: 32,
  num_hidden_layers: 32, num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 10000.0, sliding_window: 4096,
  tie_word_embeddings: false, torch_dtype: 'bfloat16', vocab_size: 32000,
};

test('Mistral: the sliding window is recorded (v0.1) or absent (v0.3); explicit head_dim (Nemo)', () => {
  assert.equal(parseLlamaConfig(MISTRAL_V01).slidingWindow, 4096);
  const v03 = parseLlamaConfig({ ...MISTRAL_V01, sliding_window: null, rope_theta: 1000000.0, vocab_size: 32768 });
  assert.equal(v03.slidingWindow, null);
  assert.equal(v03.ropeTheta, 1e6);
  const nemo = parseLlamaConfig({ ...MISTRAL_V01, hidden_size: 5120, head_dim: 128, sliding_window: null });
  assert.equal(nemo.headDim, 128);
  assert.equal(nemo.architecture, 'MistralForCausalLM');
  assert.equal(nemo.qkvBias, false);
});

const QWEN25 = {
  architectures: ['Qwen2ForCausalLM'], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151643, hidden_act: 'silu',
  hidden_size: 896, intermediate_size: 4864, max_position_embeddings: 32768, max_window_layers: 24, model_type: 'qwen2',
  num_attention_heads: 14, num_hidden_layers: 24, num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_theta: 1000000.0,
  sliding_window: 32768, tie_word_embeddings: true, torch_dtype: 'bfloat16', use_cache: true, use_sliding_window: false,
  vocab_size: 151936,
};

test('Qwen2: q/k/v bias but no o_proj bias; the window applies only with use_sliding_window and to some layers', () => {
  const c = parseLlamaConfig(QWEN25);
  assert.equal(c.qkvBias, true);
  assert.equal(c.oBias, false);
  assert.equal(c.mlpBias, false);
  assert.equal(c.headDim, 64);
  assert.equal(c.slidingWindow, null);
  assert.equal(parseLlamaConfig({ ...QWEN25, use_sliding_window: true, max_window_layers: 21 }).slidingWindow, 32768);
  assert.equal(parseLlamaConfig({ ...QWEN25, use_sliding_window: true, max_window_layers: 24 }).slidingWindow, null);
  // 5.x lists the layer kinds.
  const types = (sliding: boolean) => Array.from({ length: 24 }, (_, i) => (sliding && i >= 21 ? 'sliding_attention' : 'full_attention'));
  assert.equal(parseLlamaConfig({ ...toV5(QWEN25), use_sliding_window: true, layer_types: types(true) }).slidingWindow, 32768);
  assert.equal(parseLlamaConfig({ ...toV5(QWEN25), use_sliding_window: true, layer_types: types(false) }).slidingWindow, null);
});

test('model_type stands in for a missing "architectures"', () => {
  const { architectures: _, ...rest } = QWEN25;
  assert.equal(parseLlamaConfig(rest).architecture, 'Qwen2ForCausalLM');
});

test('the fixtures written by transformers 5.x parse', () => {
  const llama = readLlamaConfig(path.join(FIXTURES, 'llama3_gqa'));
  assert.equal(llama.ropeScaling.type, 'llama3');
  assert.equal(llama.numKeyValueHeads, 2);
  assert.equal(llama.dtype, 'f32');
  const mistral = readLlamaConfig(path.join(FIXTURES, 'mistral_sharded'));
  assert.equal(mistral.headDim, 24);
  assert.equal(mistral.slidingWindow, 4096);
  const qwen = readLlamaConfig(path.join(FIXTURES, 'qwen2_bias_tied'));
  assert.equal(qwen.qkvBias, true);
  assert.equal(qwen.tieWordEmbeddings, true);
  assert.equal(qwen.bosTokenId, null);
  assert.deepEqual(qwen.eosTokenIds, [3]);
  assert.equal(readLlamaConfig(path.join(FIXTURES, 'llama_tied_bf16')).dtype, 'bf16');
});

function rejects(raw: unknown, pattern: RegExp): void {
  assert.throws(() => parseLlamaConfig(raw, '/models/m/config.json'), (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    assert.match(e.message, /^\/models\/m\/config\.json: /);
    assert.match(e.message, pattern);
    return true;
  });
}

test('errors name the file and the key', () => {
  rejects({ ...LLAMA_32_V4, architectures: ['MixtralForCausalLM'] }, /unsupported architecture 'MixtralForCausalLM'.*LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM/);
  rejects({ model_type: 'gemma', hidden_size: 8 }, /unsupported architecture.*"gemma"/);
  const { hidden_size: _, ...noHidden } = LLAMA_32_V4;
  rejects(noHidden, /"hidden_size" is missing/);
  const { head_dim: __, ...noHeadDim } = LLAMA_32_V4;
  rejects({ ...noHeadDim, hidden_size: 2000, num_attention_heads: 3 }, /"num_attention_heads" \(3\) does not divide "hidden_size" \(2000\)/);
  rejects({ ...LLAMA_32_V4, num_key_value_heads: 5 }, /"num_key_value_heads" \(5\) does not divide "num_attention_heads" \(32\)/);
  rejects({ ...LLAMA_32_V4, head_dim: 63 }, /head dimension 63.*even/);
  rejects({ ...LLAMA_32_V4, vocab_size: -3 }, /"vocab_size" must be a positive integer, got -3/);
  rejects({ ...LLAMA_32_V4, num_hidden_layers: 2.5 }, /"num_hidden_layers" must be a positive integer/);
  rejects({ ...LLAMA_32_V4, rms_norm_eps: 0 }, /"rms_norm_eps" must be a positive number/);
  rejects({ ...LLAMA_32_V4, hidden_act: 'gelu' }, /"hidden_act" "gelu" is not supported/);
  rejects({ ...LLAMA_32_V4, rope_scaling: { rope_type: 'yarn', factor: 4 } }, /"rope_scaling" rope type "yarn" is not supported/);
  rejects(toV5({ ...LLAMA_32_V4, rope_scaling: { rope_type: 'dynamic', factor: 4 } }), /"rope_parameters" rope type "dynamic" is not supported/);
  rejects({ ...LLAMA_32_V4, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4 } }, /"rope_scaling\.original_max_position_embeddings" must be a positive number/);
  rejects(toV5({ ...LLAMA_32_V4, rope_theta: -1 }), /"rope_parameters\.rope_theta" must be a positive number, got -1/);
  rejects({ ...LLAMA_32_V4, torch_dtype: 'float64' }, /"torch_dtype" "float64" is not supported/);
  rejects({ ...LLAMA_32_V4, eos_token_id: [128001, 'x'] }, /"eos_token_id" must be a token id/);
  rejects({ ...LLAMA_32_V4, tie_word_embeddings: 'yes' }, /"tie_word_embeddings" must be true or false/);
  rejects({ ...MISTRAL_V01, sliding_window: 0 }, /"sliding_window" must be a positive integer or null/);
  rejects([1, 2], /not a JSON object/);
});

test('readLlamaConfig: a missing or malformed config.json is named', () => {
  const empty = path.join(tmp, 'empty');
  fs.mkdirSync(empty);
  assert.throws(() => readLlamaConfig(empty), (e: unknown) => e instanceof ConfigError && e.message === `${path.join(empty, 'config.json')}: missing (a model directory needs config.json)`);
  const bad = path.join(tmp, 'bad');
  fs.mkdirSync(bad);
  fs.writeFileSync(path.join(bad, 'config.json'), '{"hidden_size": 64,');
  assert.throws(() => readLlamaConfig(bad), (e: unknown) => e instanceof ConfigError && e.message.startsWith(`${path.join(bad, 'config.json')}: not valid JSON`));
});
