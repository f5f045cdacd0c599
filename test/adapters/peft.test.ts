// PEFT's adapter format both ways: finlora writes adapter_config.json byte for byte as
// PEFT 0.21 does and the same tensors under the same keys; save → load round trips;
// adapters other writers produce load (FinLoRA's published DoRA layout with PEFT 0.15's
// config and bf16 tensors, also checked at Llama-3.1-8B's shapes; the older
// lora_magnitude_vector.weight key; torchtune's magnitude / lora_a / lora_b; keys
// without the base_model.model. prefix); bad input gives an error naming the file and
// module and leaves the model as it was; saves are atomic.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { LoraModel } from '../../src/adapters/lora/model.js';
import {
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  AdapterError,
  checkPeftAdapter,
  llamaLinearShapes,
  loadPeftAdapter,
  savePeftAdapter,
  writeAdapterFiles,
} from '../../src/adapters/peft.js';
import { noGrad } from '../../src/autograd/tape.js';
import { type HostTensor, SafetensorsFile, withSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { parseLlamaConfig } from '../../src/models/llama/config.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { tensor } from '../../src/ops/creation.js';
import { roundTo } from '../../src/tensor/dtype.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, values } from '../helpers.js';

const ADAPTERS = new URL('../../../test/fixtures/adapters/', import.meta.url).pathname;
const MODELS = new URL('../../../test/fixtures/models/', import.meta.url).pathname;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-peft-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let counter = 0;
function fresh(name: string): string {
  return path.join(tmp, `${name}-${counter++}`);
}

function readTensors(file: string): Map<string, { format: string; shape: readonly number[]; data: Float32Array }> {
  return withSafetensors(file, (f) => new Map(f.names().map((n) => [n, { format: f.info(n).format, shape: f.info(n).shape, data: Float32Array.from(f.read(n)) }])));
}

const ids = [[5, 17, 200, 31, 9, 77, 140, 3], [250, 4, 66, 18, 101, 7, 42, 199]];

function logitsWith(base: string, adapter: string | null): Float64Array {
  const model = LlamaForCausalLM.fromPretrained(`${MODELS}${base}`);
  try {
    if (adapter !== null) loadPeftAdapter(adapter, model);
    return noGrad(() => scope(() => values(model.forward(tensor(ids.flat(), [2, 8], { dtype: 'int32', device: model.backend })))));
  } finally {
    model.dispose();
  }
}

/** A copy of a fixture adapter with its tensors renamed / converted and its config edited. */
function variantOf(
  fixture: string,
  opts: { rename?: (k: string) => string; keep?: (k: string) => boolean; dtype?: 'bf16'; config?: (c: Record<string, unknown>) => Record<string, unknown> },
): string {
  const dir = fresh(fixture);
  fs.mkdirSync(dir);
  const src = `${ADAPTERS}${fixture}/adapter/`;
  const cfg = JSON.parse(fs.readFileSync(src + ADAPTER_CONFIG_NAME, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(dir, ADAPTER_CONFIG_NAME), JSON.stringify(opts.config ? opts.config(cfg) : cfg, null, 2));
  const out: Record<string, HostTensor> = {};
  for (const [k, t] of readTensors(src + ADAPTER_WEIGHTS_NAME)) {
    if (opts.keep === undefined || opts.keep(k)) out[opts.rename ? opts.rename(k) : k] = { dtype: opts.dtype ?? 'f32', shape: t.shape, data: t.data };
  }
  writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_NAME), out, { format: 'pt' });
  return dir;
}

test('save writes what PEFT 0.21 writes: the same adapter_config.json bytes, keys, dtypes and values', () => {
  for (const name of ['dora_qkv', 'dora_all_rslora', 'lora_plain']) {
    const src = `${ADAPTERS}${name}/adapter`;
    const model = LlamaForCausalLM.fromPretrained(`${MODELS}llama3_gqa`);
    try {
      const lm = loadPeftAdapter(src, model);
      const dir = fresh(name);
      savePeftAdapter(dir, lm);
      assert.deepEqual(fs.readdirSync(dir).sort(), [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]);
      assert.equal(fs.readFileSync(path.join(dir, ADAPTER_CONFIG_NAME), 'utf8'), fs.readFileSync(path.join(src, ADAPTER_CONFIG_NAME), 'utf8'), `${name}: adapter_config.json`);
      const mine = readTensors(path.join(dir, ADAPTER_WEIGHTS_NAME));
      const peft = readTensors(path.join(src, ADAPTER_WEIGHTS_NAME));
      assert.deepEqual([...mine.keys()], [...peft.keys()], `${name}: keys`);
      for (const [k, t] of peft) {
        assert.equal(mine.get(k)?.format, 'F32');
        assert.deepEqual(mine.get(k)?.shape, t.shape);
        assert.deepEqual(mine.get(k)?.data, t.data, `${name}: ${k}`);
      }
      withSafetensors(path.join(dir, ADAPTER_WEIGHTS_NAME), (f) => assert.deepEqual(f.metadata, { format: 'pt' }));
      assert.deepEqual(fs.readFileSync(path.join(dir, ADAPTER_WEIGHTS_NAME)), fs.readFileSync(path.join(src, ADAPTER_WEIGHTS_NAME)), `${name}: the safetensors bytes`);
    } finally {
      model.dispose();
    }
  }
});

test('save → load round trip of a freshly injected adapter with trained-looking values', () => {
  const model = LlamaForCausalLM.fromPretrained(`${MODELS}llama3_gqa`);
  const dir = fresh('roundtrip');
  let expected: Float64Array;
  try {
    const lm = LoraModel.inject(model, { r: 4, lora_alpha: 8, use_dora: true, use_rslora: true, target_modules: ['q_proj', 'o_proj', 'up_proj'], alpha_pattern: { o_proj: 4 } }, { seed: 9 });
    noGrad(() => {
      for (const [, t] of lm.namedTensors()) {
        const v = values(t).map((x, i) => x * 1.1 + 0.01 * Math.sin(i));
        scope(() => t.backend.write(t.storage.buffer, 0, new Uint8Array(Float32Array.from(v).buffer), 'f32'));
      }
    });
    lm.invalidate();
    savePeftAdapter(dir, lm, { baseModelNameOrPath: 'fixtures/llama3_gqa' });
    expected = noGrad(() => scope(() => values(model.forward(tensor(ids.flat(), [2, 8], { dtype: 'int32', device: model.backend })))));
  } finally {
    model.dispose();
  }
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, ADAPTER_CONFIG_NAME), 'utf8')) as Record<string, unknown>;
  assert.equal(cfg.base_model_name_or_path, 'fixtures/llama3_gqa');
  assert.deepEqual([cfg.r, cfg.lora_alpha, cfg.use_dora, cfg.use_rslora, cfg.peft_type, cfg.task_type], [4, 8, true, true, 'LORA', 'CAUSAL_LM']);
  assert.deepEqual(cfg.alpha_pattern, { o_proj: 4 });
  assert.deepEqual(logitsWith('llama3_gqa', dir), expected);
});

test("foreign layouts: FinLoRA's (PEFT 0.15 config, bf16), the older magnitude key, torchtune's names, no prefix", () => {
  const reference = logitsWith('llama3_gqa', `${ADAPTERS}dora_qkv/adapter`);
  // FinLoRA's published adapter_config.json (lora_adapters/8bits_r8/.../adapter_config.json), with DoRA on.
  const finlora015 = (c: Record<string, unknown>) => ({
    alpha_pattern: {}, auto_mapping: null, base_model_name_or_path: 'meta-llama/Llama-3.1-8B-Instruct', bias: 'none', corda_config: null,
    eva_config: null, exclude_modules: null, fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, layer_replication: null,
    layers_pattern: null, layers_to_transform: null, loftq_config: {}, lora_alpha: c.lora_alpha, lora_bias: false, lora_dropout: 0.05,
    megatron_config: null, megatron_core: 'megatron.core', modules_to_save: null, peft_type: 'LORA', r: c.r, rank_pattern: {}, revision: null,
    target_modules: ['k_proj', 'v_proj', 'q_proj'], task_type: 'CAUSAL_LM', trainable_token_indices: null, use_dora: true, use_rslora: false,
  });
  const bf16 = variantOf('dora_qkv', { dtype: 'bf16', config: finlora015 });
  // The bf16 file holds the fixture's values rounded to bf16: the same as an f32 file of the rounded values.
  const rounded = variantOf('dora_qkv', { config: finlora015 });
  const f = path.join(rounded, ADAPTER_WEIGHTS_NAME);
  const t = readTensors(f);
  writeSafetensors(f, Object.fromEntries([...t].map(([k, v]) => [k, { dtype: 'f32' as const, shape: v.shape, data: v.data.map((x) => roundTo('bf16', x)) }])), { format: 'pt' });
  const fromBf16 = logitsWith('llama3_gqa', bf16);
  assert.deepEqual(fromBf16, logitsWith('llama3_gqa', rounded), 'bf16 tensors load as their f32 values');
  assertClose(fromBf16, reference, { atol: 0.05, rtol: 0 }, 'bf16 adapter close to the f32 one');

  const layouts: [string, (k: string) => string][] = [
    ['lora_magnitude_vector.weight', (k) => (k.endsWith('.lora_magnitude_vector') ? `${k}.weight` : k)],
    ['torchtune', (k) => k.replace(/\.lora_magnitude_vector$/, '.magnitude').replace('.lora_A.', '.lora_a.').replace('.lora_B.', '.lora_b.')],
    ['no prefix', (k) => k.replace(/^base_model\.model\./, '')],
  ];
  for (const [what, rename] of layouts) assert.deepEqual(logitsWith('llama3_gqa', variantOf('dora_qkv', { rename })), reference, what);

  // Keys a config leaves out read as PEFT reads them: lora_alpha 8 (lora_plain was made with 8;
  // finlora's own default, 16, would change the logits), r 8.
  const noAlpha = variantOf('lora_plain', { config: (c) => Object.fromEntries(Object.entries(c).filter(([k]) => k !== 'lora_alpha')) });
  assert.deepEqual(logitsWith('llama3_gqa', noAlpha), logitsWith('llama3_gqa', `${ADAPTERS}lora_plain/adapter`), 'lora_alpha defaults to 8');
  const noR = variantOf('lora_plain', { config: (c) => Object.fromEntries(Object.entries(c).filter(([k]) => k !== 'r')) });
  assert.throws(() => logitsWith('llama3_gqa', noR), /lora_A\.weight has shape \[4, 64\], but the model's \[64, 64\] weight with r 8 needs \[8, 64\]/);
});

test("FinLoRA's published layout at Llama-3.1-8B's shapes: r 8, DoRA on q/k/v of 32 layers, bf16", () => {
  const config = parseLlamaConfig({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32,
    num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, rms_norm_eps: 1e-5, max_position_embeddings: 131072,
    rope_theta: 500000, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    tie_word_embeddings: false, torch_dtype: 'bfloat16',
  });
  const dir = fresh('finlora-8b');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, ADAPTER_CONFIG_NAME), JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 8, lora_alpha: 16, lora_dropout: 0.05, target_modules: ['q_proj', 'v_proj', 'k_proj'], use_dora: true, bias: 'none', fan_in_fan_out: false }));
  const tensors: Record<string, HostTensor> = {};
  const zeros = (shape: number[]): HostTensor => ({ dtype: 'bf16', shape, data: new Float32Array(shape[0] * (shape[1] ?? 1)) });
  for (let l = 0; l < 32; l++) {
    for (const [p, out] of [['q_proj', 4096], ['k_proj', 1024], ['v_proj', 1024]] as const) {
      const k = `base_model.model.model.layers.${l}.self_attn.${p}`;
      tensors[`${k}.lora_A.weight`] = zeros([8, 4096]);
      tensors[`${k}.lora_B.weight`] = zeros([out, 8]);
      tensors[`${k}.lora_magnitude_vector`] = zeros([out]);
    }
  }
  writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_NAME), tensors, { format: 'pt' });
  const check = checkPeftAdapter(dir, llamaLinearShapes(config));
  assert.equal(check.modules.length, 96);
  assert.equal(check.config.use_dora, true);
  assert.equal(check.config.lora_alpha, 16);
  // The same adapter against Llama-3.2-1B's shapes (hidden 2048, 16 layers) fails, naming the module.
  const small = parseLlamaConfig({ ...{ architectures: ['LlamaForCausalLM'], model_type: 'llama' }, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, tie_word_embeddings: true });
  assert.throws(() => checkPeftAdapter(dir, llamaLinearShapes(small)), /adapter_model\.safetensors: model\.layers\.\d+\.self_attn\.[qkv]_proj: the adapter has tensors for this module, but|lora_A\.weight has shape \[8, 4096\], but the model's \[2048, 2048\] weight/);
});

test('bad input: an error naming the file and module; the model is left as it was', () => {
  const model = LlamaForCausalLM.fromPretrained(`${MODELS}llama3_gqa`);
  const names = () => [...model.namedParameters()].map(([n]) => n);
  const before = names();
  const q0 = 'base_model.model.model.layers.0.self_attn.q_proj';
  const cases: [string, string, RegExp][] = [
    ['missing directory', path.join(tmp, 'nope'), /nope\/adapter_config\.json: missing/],
    ['corrupt config', (() => {
      const d = variantOf('dora_qkv', {});
      fs.writeFileSync(path.join(d, ADAPTER_CONFIG_NAME), '{"peft_type": "LORA", ');
      return d;
    })(), /adapter_config\.json: not valid JSON/],
    ['unknown peft_type', variantOf('dora_qkv', { config: (c) => ({ ...c, peft_type: 'IA3' }) }), /adapter_config\.json: peft_type "IA3" is not supported/],
    ['unsupported setting', variantOf('dora_qkv', { config: (c) => ({ ...c, fan_in_fan_out: true }) }), /fan_in_fan_out = true: Conv1D-style/],
    ['targets matching nothing', variantOf('dora_qkv', { config: (c) => ({ ...c, target_modules: ['query', 'value'] }) }), /adapter_config\.json: target_modules \["query","value"\] match no module of the model; its Linear modules include model\.layers\.0\.self_attn\.q_proj/],
    ['missing weights', (() => {
      const d = variantOf('dora_qkv', {});
      fs.rmSync(path.join(d, ADAPTER_WEIGHTS_NAME));
      return d;
    })(), /adapter_model\.safetensors: missing/],
    ['truncated weights', (() => {
      const d = variantOf('dora_qkv', {});
      const f = path.join(d, ADAPTER_WEIGHTS_NAME);
      fs.truncateSync(f, fs.statSync(f).size - 100);
      return d;
    })(), /adapter_model\.safetensors: .*(truncated|run past the end)/],
    ['wrong rank', variantOf('dora_qkv', { config: (c) => ({ ...c, r: 16 }) }), /adapter_model\.safetensors: model\.layers\.0\.self_attn\.q_proj: .*lora_A\.weight has shape \[8, 64\], but the model's \[64, 64\] weight with r 16 needs \[16, 64\]/],
    ['a deeper base model', variantOf('dora_qkv', { rename: (k) => k.replace('.layers.1.', '.layers.5.') }), /adapter_model\.safetensors: model\.layers\.5\.self_attn\.[qkv]_proj: the adapter has tensors for this module, but .* do not select it in this model \(another base model\?\)/],
    ['a shallower base model', variantOf('dora_qkv', { keep: (k) => !k.includes('.layers.1.') }), /adapter_model\.safetensors: model\.layers\.1\.self_attn\.q_proj: target_modules selects this module \[64, 64\], but the adapter has no tensors for it/],
    ['DoRA without magnitudes', variantOf('dora_qkv', { rename: (k) => (k.endsWith('magnitude_vector') ? 'dropped' : k) }), /unexpected tensor "dropped"/],
    ['use_dora without magnitude', (() => {
      const d = variantOf('dora_qkv', {});
      const f = path.join(d, ADAPTER_WEIGHTS_NAME);
      const t = readTensors(f);
      t.delete(`${q0}.lora_magnitude_vector`);
      writeSafetensors(f, Object.fromEntries([...t].map(([k, v]) => [k, { dtype: 'f32' as const, shape: v.shape, data: v.data }])));
      return d;
    })(), /model\.layers\.0\.self_attn\.q_proj: use_dora is true in adapter_config\.json but the adapter has no lora_magnitude_vector/],
    ['magnitude without use_dora', variantOf('dora_qkv', { config: (c) => ({ ...c, use_dora: false }) }), /lora_magnitude_vector is a DoRA magnitude, but use_dora is false/],
    ['a module the config does not select', variantOf('dora_qkv', { config: (c) => ({ ...c, target_modules: ['q_proj', 'k_proj'] }) }), /model\.layers\.\d\.self_attn\.v_proj: the adapter has tensors for this module, but adapter_config\.json's target_modules do not select it/],
  ];
  try {
    for (const [what, dir, re] of cases) {
      assert.throws(() => loadPeftAdapter(dir, model), (e: unknown) => e instanceof AdapterError && re.test(e.message), what);
      assert.deepEqual(names(), before, `${what}: model untouched`);
    }
    // A duplicate of one tensor under two layouts is ambiguous.
    const dup = variantOf('dora_qkv', {});
    const f = path.join(dup, ADAPTER_WEIGHTS_NAME);
    const t = readTensors(f);
    const m = t.get(`${q0}.lora_magnitude_vector`)!;
    writeSafetensors(f, { ...Object.fromEntries([...t].map(([k, v]) => [k, { dtype: 'f32' as const, shape: v.shape, data: v.data }])), [`${q0}.magnitude`]: { dtype: 'f32', shape: m.shape, data: m.data } });
    assert.throws(() => loadPeftAdapter(dup, model), /model\.layers\.0\.self_attn\.q_proj: both ".*\.lora_magnitude_vector" and ".*\.magnitude" give its magnitude/);
    assert.deepEqual(names(), before);
  } finally {
    model.dispose();
  }
});

test('saving refuses a DoRA adapter without magnitudes; writes are atomic', () => {
  const model = LlamaForCausalLM.fromPretrained(`${MODELS}llama3_gqa`);
  try {
    const lm = LoraModel.inject(model, { target_modules: ['q_proj'], use_dora: false });
    const dir = fresh('refused');
    assert.throws(
      () => savePeftAdapter(dir, { config: { ...lm.config, use_dora: true }, layers: lm.layers }),
      /model\.layers\.0\.self_attn\.q_proj: use_dora is set but the layer has no magnitude vector; refusing to save a DoRA adapter without its magnitudes/,
    );
    assert.equal(fs.existsSync(dir), false, 'nothing written');

    // A new directory appears whole; a save with the same config replaces only the weights,
    // one with another config swaps the directory; other files survive, no temporaries stay.
    const parent = fresh('atomic');
    const target = path.join(parent, 'adapter');
    savePeftAdapter(target, lm);
    fs.writeFileSync(path.join(target, 'metrics.jsonl'), '{"step": 1}\n');
    const configBefore = fs.statSync(path.join(target, ADAPTER_CONFIG_NAME)).ino;
    savePeftAdapter(target, lm);
    assert.equal(fs.statSync(path.join(target, ADAPTER_CONFIG_NAME)).ino, configBefore, 'same config: only the weights file is replaced');
    savePeftAdapter(target, lm, { baseModelNameOrPath: 'another/base' });
    assert.match(fs.readFileSync(path.join(target, ADAPTER_CONFIG_NAME), 'utf8'), /"base_model_name_or_path": "another\/base"/);
    assert.deepEqual(fs.readdirSync(target).sort(), [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, 'metrics.jsonl']);
    assert.equal(fs.readFileSync(path.join(target, 'metrics.jsonl'), 'utf8'), '{"step": 1}\n');
    assert.deepEqual(fs.readdirSync(parent), ['adapter'], 'no temporary directories left');

    // A failure while writing leaves the old adapter as it was.
    const oldConfig = fs.readFileSync(path.join(target, ADAPTER_CONFIG_NAME), 'utf8');
    const oldWeights = fs.readFileSync(path.join(target, ADAPTER_WEIGHTS_NAME));
    assert.throws(() => writeAdapterFiles(target, '{"new": true}', () => {
      throw new Error('disk full');
    }), /disk full/);
    assert.equal(fs.readFileSync(path.join(target, ADAPTER_CONFIG_NAME), 'utf8'), oldConfig);
    assert.deepEqual(fs.readFileSync(path.join(target, ADAPTER_WEIGHTS_NAME)), oldWeights);
    assert.deepEqual(fs.readdirSync(parent), ['adapter']);
    const again = SafetensorsFile.open(path.join(target, ADAPTER_WEIGHTS_NAME));
    again.close();
  } finally {
    model.dispose();
  }
});
