// LoRA configuration with PEFT's rules: target_modules as a list (equal, or ending in
// "." + entry) and as a regex that must match the whole name, "all-linear",
// exclude_modules, rank_pattern / alpha_pattern (first key matching (.*\.)?(key)$),
// the scaling with and without rsLoRA, validation, and injection errors that name what
// is wrong (targets that match nothing list the model's Linear modules).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isTargeted, layerHyperparameters, LoraConfigError, loraConfig, patternKey } from '../../src/adapters/lora/config.js';
import { LoraModel } from '../../src/adapters/lora/model.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';

const MODEL = new URL('../../../test/fixtures/models/llama3_gqa', import.meta.url).pathname;
const Q0 = 'model.layers.0.self_attn.q_proj';

test('target_modules as a list: equal names or dotted suffixes only', () => {
  const c = loraConfig({ target_modules: ['q_proj', 'layers.1.mlp.down_proj'] });
  assert.equal(isTargeted(c, Q0), true);
  assert.equal(isTargeted(c, 'q_proj'), true);
  assert.equal(isTargeted(c, 'model.layers.0.self_attn.xq_proj'), false, 'a suffix must start at a dot');
  assert.equal(isTargeted(c, 'model.layers.1.mlp.down_proj'), true);
  assert.equal(isTargeted(c, 'model.layers.11.mlp.down_proj'), false);
  assert.equal(isTargeted(c, 'model.layers.0.self_attn'), false);
});

test('target_modules as a string: a Python regex that must match the whole name; all-linear; exclude_modules', () => {
  const c = loraConfig({ target_modules: String.raw`.*\.(q|v)_proj` });
  assert.equal(isTargeted(c, Q0), true);
  assert.equal(isTargeted(c, 'model.layers.0.self_attn.k_proj'), false);
  assert.equal(isTargeted(c, `${Q0}.extra`), false, 'fullmatch, not search');
  const named = loraConfig({ target_modules: String.raw`model\.layers\.(?P<n>\d+)\.self_attn\.q_proj` });
  assert.equal(isTargeted(named, Q0), true, 'Python named groups');
  const all = loraConfig({ target_modules: 'all-linear' });
  assert.equal(isTargeted(all, Q0), true);
  assert.equal(isTargeted(all, 'lm_head', true), false, 'all-linear leaves the output head out');
  const ex = loraConfig({ target_modules: ['q_proj', 'k_proj'], exclude_modules: ['layers.0.self_attn.k_proj'] });
  assert.equal(isTargeted(ex, 'model.layers.0.self_attn.k_proj'), false);
  assert.equal(isTargeted(ex, 'model.layers.1.self_attn.k_proj'), true);
  const exRe = loraConfig({ target_modules: ['q_proj'], exclude_modules: String.raw`model\.layers\.0\..*` });
  assert.equal(isTargeted(exRe, Q0), false);
  assert.equal(isTargeted(exRe, 'model.layers.1.self_attn.q_proj'), true);
});

test("rank_pattern and alpha_pattern: PEFT's get_pattern_key, first matching key wins; scaling with and without rsLoRA", () => {
  assert.equal(patternKey(['down_proj', 'mlp.down_proj'], 'model.layers.0.mlp.down_proj'), 'down_proj');
  assert.equal(patternKey(['mlp.down_proj', 'down_proj'], 'model.layers.0.mlp.down_proj'), 'mlp.down_proj');
  assert.equal(patternKey([String.raw`layers\.1\..*`], 'model.layers.1.mlp.up_proj'), String.raw`layers\.1\..*`);
  assert.equal(patternKey(['proj'], 'model.layers.1.mlp.up_proj'), null, 'a key matches whole dotted segments from the end');
  const c = loraConfig({ r: 8, lora_alpha: 16, rank_pattern: { down_proj: 4 }, alpha_pattern: { [Q0]: 32 } });
  assert.deepEqual(layerHyperparameters(c, 'model.layers.0.mlp.down_proj'), { r: 4, lora_alpha: 16, scaling: 4 });
  assert.deepEqual(layerHyperparameters(c, Q0), { r: 8, lora_alpha: 32, scaling: 4 });
  assert.deepEqual(layerHyperparameters(c, 'model.layers.1.self_attn.q_proj'), { r: 8, lora_alpha: 16, scaling: 2 });
  const rs = loraConfig({ r: 8, lora_alpha: 16, use_rslora: true });
  assert.equal(layerHyperparameters(rs, Q0).scaling, 16 / Math.sqrt(8));
});

test("defaults: FinLoRA's lora_alpha 16 and q/k/v; PEFT's r 8; bad values name the key", () => {
  const d = loraConfig();
  assert.equal(d.lora_alpha, 16);
  assert.equal(d.r, 8);
  assert.deepEqual(d.target_modules, ['q_proj', 'k_proj', 'v_proj']);
  assert.equal(d.dropout_semantics, 'finlora');
  const bad: [Parameters<typeof loraConfig>[0], RegExp][] = [
    [{ r: 0 }, /r must be a positive integer/],
    [{ r: 2.5 }, /r must be a positive integer/],
    [{ lora_dropout: 1 }, /lora_dropout must be in \[0, 1\)/],
    [{ lora_alpha: Number.NaN }, /lora_alpha must be a finite number/],
    [{ target_modules: [] }, /target_modules is an empty list/],
    [{ target_modules: '(' }, /target_modules: "\(" is not a valid regular expression/],
    [{ rank_pattern: { q_proj: 0 } }, /rank_pattern\["q_proj"\] must be a positive integer/],
    [{ dropout_semantics: 'torch' as 'peft' }, /dropout_semantics must be "finlora" or "peft"/],
    [{ bias: 'all' as 'none' }, /bias "all" is not supported/],
  ];
  for (const [input, re] of bad) assert.throws(() => loraConfig(input), (e: unknown) => e instanceof LoraConfigError && re.test(e.message), JSON.stringify(input));
});

test('injection: the targeted Linear modules, a summary like PEFT, and clear errors', () => {
  const model = LlamaForCausalLM.fromPretrained(MODEL);
  const before = [...model.namedParameters()].map(([n]) => n);
  try {
    assert.throws(
      () => LoraModel.inject(model, { target_modules: ['qproj', 'kproj'] }),
      /target_modules \["qproj","kproj"\] match no module of the model; its Linear modules include model\.layers\.0\.self_attn\.q_proj, model\.layers\.0\.self_attn\.k_proj/,
    );
    assert.throws(() => LoraModel.inject(model, { target_modules: ['mlp'] }), /target_modules selects model\.layers\.0\.mlp \(LlamaMLP\), but LoRA adapters go on Linear layers only/);
    assert.throws(() => LoraModel.inject(model, { target_modules: ['embed_tokens'] }), /model\.embed_tokens \(Embedding\)/);
    assert.deepEqual([...model.namedParameters()].map(([n]) => n), before, 'a failed injection leaves the model as it was');

    const lm = LoraModel.inject(model, { target_modules: 'all-linear', use_dora: true, rank_pattern: { down_proj: 4 } }, { seed: 3 });
    assert.equal(lm.layers.size, 14, '7 per layer, lm_head left out');
    assert.ok(!lm.layers.has('lm_head'));
    assert.deepEqual(lm.layers.get('model.layers.1.mlp.down_proj')?.lora_A.weight.shape, [4, 96]);
    const names = [...model.namedParameters()].map(([n]) => n);
    assert.ok(names.includes('model.layers.0.self_attn.q_proj.lora_A.weight'));
    assert.ok(names.includes('model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight'));
    const trainable = model.trainableParameters();
    assert.deepEqual(new Set(trainable), new Set(lm.trainableParameters()), 'only the adapter trains');
    const { trainable: t, all } = lm.parameterCounts();
    assert.equal(lm.summary(), `trainable params: ${t.toLocaleString('en-US')} || all params: ${all.toLocaleString('en-US')} || trainable%: ${((100 * t) / all).toFixed(4)}`);
    assert.match(lm.summary(), /^trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}$/);
    assert.throws(() => LoraModel.inject(model, { target_modules: ['q_proj'] }), /already has a LoRA adapter/);
    lm.unload();
    assert.deepEqual([...model.namedParameters()].map(([n]) => n), before, 'unload restores the module tree');
  } finally {
    model.dispose();
  }
});
