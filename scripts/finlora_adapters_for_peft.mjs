#!/usr/bin/env node
// Writes adapters with finlora for the other direction of the PEFT parity check
// (scripts/make_adapter_fixtures.py check): PEFT must load what finlora saves and give
// finlora's logits, and transformers must load what `finlora merge` writes.
//
// For each case it loads a fixture base model, either reloads a PEFT fixture adapter or
// injects a fresh one with finlora (configs PEFT's fixtures do not cover: exclude_modules,
// rank and alpha patterns with rsLoRA, a regex target), moves every tensor away from
// where it came from (non-zero lora_B, perturbed magnitudes), and writes under OUT/<case>/:
//   adapter/             savePeftAdapter's output
//   logits.safetensors   input_ids int32 [2, 8] and finlora's logits f32 [2, 8, V] (eval)
//   merged/              mergeAdapter's model directory
// It prints one line per case: "<case> <base>".
//
// Usage (after npm run build): node scripts/finlora_adapters_for_peft.mjs OUT
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mergeAdapter } from '../dist/src/adapters/merge.js';
import { LoraModel } from '../dist/src/adapters/lora/model.js';
import { loadPeftAdapter, savePeftAdapter } from '../dist/src/adapters/peft.js';
import { noGrad } from '../dist/src/autograd/tape.js';
import { writeSafetensors } from '../dist/src/io/safetensors.js';
import { LlamaForCausalLM } from '../dist/src/models/llama/model.js';
import { tensor } from '../dist/src/ops/creation.js';
import { assign } from '../dist/src/ops/inplace.js';
import { Rng } from '../dist/src/tensor/rng.js';
import { scope } from '../dist/src/tensor/tensor.js';

const out = process.argv[2];
if (!out) throw new Error('usage: node scripts/finlora_adapters_for_peft.mjs OUT');
const root = new URL('..', import.meta.url).pathname;
const MODELS = 'test/fixtures/models';
const ADAPTERS = 'test/fixtures/adapters';

const CASES = [
  { name: 'dora_qkv_resaved', base: 'llama3_gqa', from: `${ADAPTERS}/dora_qkv/adapter` },
  { name: 'dora_qkv_bias_resaved', base: 'qwen2_bias_tied', from: `${ADAPTERS}/dora_qkv_bias/adapter` },
  {
    name: 'fresh_dora_patterns', base: 'llama3_gqa',
    config: {
      r: 6, lora_alpha: 12, use_dora: true, use_rslora: true, target_modules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'],
      rank_pattern: { up_proj: 3 }, alpha_pattern: { 'model.layers.0.self_attn.v_proj': 5 }, exclude_modules: ['model.layers.1.mlp.down_proj'],
    },
  },
  { name: 'fresh_lora_regex', base: 'llama3_gqa', config: { r: 5, lora_alpha: 7, lora_dropout: 0.1, target_modules: String.raw`.*\.(o_proj|gate_proj)` } },
];

const ids = [[5, 17, 200, 31, 9, 77, 140, 3], [250, 4, 66, 18, 101, 7, 42, 199]];
const rng = new Rng(2024);

for (const c of CASES) {
  const dir = path.join(out, c.name);
  fs.mkdirSync(dir, { recursive: true });
  const basePath = `${MODELS}/${c.base}`;
  const model = LlamaForCausalLM.fromPretrained(path.join(root, basePath));
  const lm = c.from ? loadPeftAdapter(path.join(root, c.from), model) : LoraModel.inject(model, c.config, { seed: 7 });
  noGrad(() => {
    for (const [name, t] of lm.namedTensors()) {
      const v = Float32Array.from(scope(() => t.toArray()));
      for (let i = 0; i < v.length; i++) {
        if (name.endsWith('lora_B.weight')) v[i] = v[i] * 1.3 + 0.05 * rng.normal();
        else if (name.endsWith('lora_magnitude_vector.weight')) v[i] *= 1 + 0.1 * rng.normal();
        else v[i] *= 1 + 0.05 * rng.normal();
      }
      scope(() => assign(t, tensor(v, t.shape, { device: t.backend })));
    }
  });
  lm.invalidate();
  model.eval();
  savePeftAdapter(path.join(dir, 'adapter'), lm, { baseModelNameOrPath: basePath });
  const logits = noGrad(() => scope(() => Float32Array.from(model.forward(tensor(ids.flat(), [2, 8], { dtype: 'int32', device: model.backend })).toArray())));
  writeSafetensors(path.join(dir, 'logits.safetensors'), {
    input_ids: { dtype: 'int32', shape: [2, 8], data: ids.flat() },
    logits: { dtype: 'f32', shape: [2, 8, logits.length / 16], data: logits },
  });
  model.dispose();
  const r = mergeAdapter({ modelDir: path.join(root, basePath), adapterDir: path.join(dir, 'adapter'), outDir: path.join(dir, 'merged') });
  process.stdout.write(`${c.name} ${basePath} merged-vs-unmerged ${r.maxLogitDiff.toExponential(3)}\n`);
}
