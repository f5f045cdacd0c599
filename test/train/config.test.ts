// finetune_configs.json: FinLoRA's own file loads unchanged with every key meaning what
// it means there (and FinLoRA's defaults behind the rest); bad files and values give one
// message naming the file, the run, the key and why.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { adapterSubdir, loadAllRuns, loadRun, loraScale, RunConfigError } from '../../src/train/config.js';

function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
}
const SHARED = path.resolve(repoRoot(), '../shared/finlora-data');
const FINLORA = path.join(SHARED, 'finetune_configs.json');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-config-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let n = 0;
function configFile(runs: unknown, raw?: string): string {
  const file = path.join(tmp, `c${n++}.json`);
  fs.writeFileSync(file, raw ?? JSON.stringify(runs, null, 2));
  return file;
}

const BASE = {
  base_model: 'meta-llama/Llama-3.1-8B-Instruct',
  dataset_path: '../data/train/finlora_sentiment_train.jsonl',
  lora_r: 8,
  quant_bits: 8,
  learning_rate: 0.0001,
  num_epochs: 4,
  batch_size: 8,
  gradient_accumulation_steps: 2,
};

function fails(runs: Record<string, unknown>, name: string, pattern: RegExp): void {
  const file = configFile(runs);
  assert.throws(() => loadRun(file, name), (e: unknown) => {
    assert.ok(e instanceof RunConfigError, String(e));
    assert.match(e.message, pattern);
    assert.ok(e.message.includes(file), `names the file: ${e.message}`);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
}

test("FinLoRA's finetune_configs.json loads: every run validates", () => {
  const runs = loadAllRuns(FINLORA);
  assert.equal(runs.length, 39);
  for (const r of runs) {
    assert.ok(r.quantBits === 8 || r.quantBits === 4, r.name);
    assert.equal(r.baseModel, 'meta-llama/Llama-3.1-8B-Instruct');
    assert.equal(r.datasetFile, path.resolve(SHARED, r.datasetPath));
  }
});

test('a DoRA run: keys as FinLoRA means them, FinLoRA defaults behind the rest', () => {
  const r = loadRun(FINLORA, 'sentiment_llama_3_1_8b_8bits_r8_dora');
  assert.equal(r.loraR, 8);
  assert.equal(r.quantBits, 8);
  assert.equal(r.useDora, true);
  assert.equal(r.useRslora, false);
  assert.equal(r.learningRate, 1e-4);
  assert.equal(r.numEpochs, 4);
  assert.equal(r.batchSize, 8);
  assert.equal(r.gradientAccumulationSteps, 2);
  assert.equal(r.datasetPath, '../data/train/finlora_sentiment_train.jsonl');
  assert.equal(r.datasetFile, path.resolve(SHARED, '../data/train/finlora_sentiment_train.jsonl'));
  // FinLoRA's axolotl template
  assert.equal(r.loraAlpha, 16);
  assert.equal(r.loraDropout, 0.05);
  assert.deepEqual(r.targetModules, ['q_proj', 'k_proj', 'v_proj']);
  assert.equal(r.lrScheduler, 'cosine');
  assert.equal(r.warmupSteps, 10);
  assert.equal(r.weightDecay, 0);
  assert.equal(r.valSetSize, 0.02);
  assert.equal(r.sequenceLen, 4096);
  assert.equal(r.gradientCheckpointing, true);
  assert.equal(r.promptFormat, '[INST] {context} [/INST]');
  assert.equal(r.maxGradNorm, 1);
  assert.equal(adapterSubdir(r), path.join('8bits_r8_dora', 'sentiment_llama_3_1_8b_8bits_r8_dora'));
  assert.equal(loraScale(r), 2);
});

test('lora_alpha, rsLoRA and 4-bit runs; adapter directories as FinLoRA names them', () => {
  const a32 = loadAllRuns(FINLORA).find((r) => r.loraAlpha === 32);
  assert.ok(a32 !== undefined);
  const rs = loadRun(FINLORA, 'sentiment_llama_3_1_8b_8bits_r8_rslora');
  assert.equal(rs.useRslora, true);
  assert.equal(adapterSubdir(rs), path.join('8bits_r8_rslora', 'sentiment_llama_3_1_8b_8bits_r8_rslora'));
  assert.equal(loraScale(rs), 16 / Math.sqrt(8));
  const four = loadAllRuns(FINLORA).find((r) => r.quantBits === 4)!;
  assert.match(adapterSubdir(four), /^4bits_r\d+(_dora|_rslora)?\//);
  // unquantized (FinLoRA's fp16_r8) and DoRA with rsLoRA
  const file = configFile({ plain: { ...BASE, quant_bits: undefined }, nulled: { ...BASE, quant_bits: null }, both: { ...BASE, peft_use_dora: true, peft_use_rslora: true } });
  assert.equal(loadRun(file, 'plain').quantBits, null);
  assert.equal(adapterSubdir(loadRun(file, 'plain')), path.join('fp16_r8', 'plain'));
  assert.equal(loadRun(file, 'nulled').quantBits, null);
  assert.equal(adapterSubdir(loadRun(file, 'both')), path.join('8bits_r8_dora_rslora', 'both'));
});

test('extra keys override the defaults; --data-dir replaces the dataset directory', () => {
  const file = configFile({
    x: {
      ...BASE, target_modules: ['q_proj', 'v_proj', 'down_proj'], lora_dropout: 0, sequence_len: 512, warmup_steps: 0, lr_scheduler: 'linear',
      weight_decay: 0.01, val_set_size: 20, seed: 7, gradient_checkpointing: false, max_steps: 30, save_steps: 5, dtype: 'bf16', max_grad_norm: 0,
      prompt_format: '### Q: {instruction}\n### A: ', lora_alpha: 8, dropout_semantics: 'peft',
    },
    all: { ...BASE, target_modules: 'all-linear', lr_scheduler: 'constant_with_warmup' },
  });
  const r = loadRun(file, 'x');
  assert.deepEqual(r.targetModules, ['q_proj', 'v_proj', 'down_proj']);
  assert.deepEqual([r.loraDropout, r.sequenceLen, r.warmupSteps, r.lrScheduler, r.weightDecay, r.valSetSize, r.seed], [0, 512, 0, 'linear', 0.01, 20, 7]);
  assert.deepEqual([r.gradientCheckpointing, r.maxSteps, r.saveSteps, r.dtype, r.maxGradNorm, r.loraAlpha], [false, 30, 5, 'bf16', 0, 8]);
  assert.equal(r.promptFormat, '### Q: {instruction}\n### A: ');
  assert.equal(r.dropoutSemantics, 'peft');
  assert.equal(loadRun(FINLORA, 'sentiment_llama_3_1_8b_8bits_r8_dora').dropoutSemantics, 'finlora');
  const all = loadRun(file, 'all');
  assert.equal(all.targetModules.length, 7);
  assert.equal(all.lrScheduler, 'constant');
  const moved = loadRun(file, 'x', { dataDir: '/data/finlora' });
  assert.equal(moved.datasetFile, path.resolve('/data/finlora', 'finlora_sentiment_train.jsonl'));
  // a relative base_model path is the config file's neighbour
  const local = configFile({ l: { ...BASE, base_model: './models/tiny' } });
  assert.equal(loadRun(local, 'l').baseModel, path.join(tmp, 'models', 'tiny'));
});

test('an unknown run lists the runs there are (and the closest name)', () => {
  assert.throws(() => loadRun(FINLORA, 'sentiment_llama_3_1_8b_8bits_r8_droa'), (e: unknown) => {
    assert.ok(e instanceof RunConfigError);
    assert.match(e.message, /run 'sentiment_llama_3_1_8b_8bits_r8_droa' is not in .*finetune_configs\.json \(did you mean 'sentiment_llama_3_1_8b_8bits_r8_dora'\?\); runs there: sentiment_llama_3_1_8b_8bits_r8_rslora, /);
    assert.match(e.message, /xbrl_term_llama_3_1_8b_8bits_r8_rslora/);
    return true;
  });
  fails({}, 'demo', /run 'demo' is not in .* which defines no runs/);
});

test('invalid values name the run, the key and why', () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ lora_r: '8' }, /run 'r': lora_r must be a number, got "8" \(a string\)/],
    [{ lora_r: 0 }, /run 'r': lora_r must be between 1 and 65536, got 0/],
    [{ lora_r: 8.5 }, /lora_r must be an integer, got 8\.5/],
    [{ quant_bits: 3 }, /run 'r': quant_bits must be 8 \(int8\) or 4 \(NF4\), or absent for an unquantized base; got 3/],
    [{ quant_bits: '8' }, /quant_bits must be 8 .*got "8" \(a string\)/],
    [{ learning_rate: -1 }, /learning_rate must be greater than 0 and at most 10, got -1/],
    [{ num_epochs: 0 }, /num_epochs must be greater than 0/],
    [{ batch_size: true }, /batch_size must be a number, got true \(a boolean\)/],
    [{ peft_use_dora: 'yes' }, /peft_use_dora must be true or false, got "yes"/],
    [{ lora_dropout: 1 }, /lora_dropout must be at least 0 and less than 1, got 1/],
    [{ target_modules: ['q_proj', 'attn'] }, /target_modules names 'attn', which is not a Linear layer of a Llama decoder layer/],
    [{ target_modules: [] }, /target_modules must be a non-empty array/],
    [{ lr_scheduler: 'cosine_with_restarts' }, /lr_scheduler must be one of "cosine", "linear", "constant", got "cosine_with_restarts"/],
    [{ val_set_size: 1.5 }, /val_set_size must be a fraction below 1 or a whole count/],
    [{ dtype: 'f16' }, /dtype must be one of "f32", "bf16"/],
    [{ dropout_semantics: 'torch' }, /dropout_semantics must be one of "finlora", "peft", got "torch"/],
    [{ prompt_format: '[INST] [/INST]' }, /prompt_format must contain "\{context\}" exactly once/],
    [{ seed: -1 }, /seed must be between 0 and 4294967295/],
    [{ lora_rank: 8 }, /run 'r': unknown key 'lora_rank' \(did you mean 'lora_r'\?\); known keys: base_model, /],
    [{ dataset_path: undefined }, /run 'r': dataset_path is required/],
    [{ base_model: '' }, /base_model must not be empty/],
  ];
  for (const [patch, pattern] of cases) fails({ r: { ...BASE, ...patch } }, 'r', pattern);
  fails({ r: [1, 2] }, 'r', /run 'r' must be a JSON object of settings, got \[1,2\] \(an array\)/);
});

test('a file that is not JSON names the file, the line and the column', () => {
  const bad = configFile(null, '{\n  "r": {\n    "lora_r": 8,\n  }\n}\n');
  assert.throws(() => loadRun(bad, 'r'), new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not valid JSON: unexpected "\\}" \\(expected a double-quoted property name\\) at line 4, column 3$`));
  const cut = configFile(null, '{"r": {"lora_r": 8');
  assert.throws(() => loadRun(cut, 'r'), /is not valid JSON: unexpected end of input \(expected ',' or '\}'\) at line 1, column 19/);
  assert.throws(() => loadRun(configFile(null, ''), 'r'), /is not valid JSON: the file is empty/);
  assert.throws(() => loadRun(configFile(null, '[1]'), 'r'), /must hold a JSON object of named runs, got \[1\] \(an array\)/);
  assert.throws(() => loadRun(path.join(tmp, 'missing.json'), 'r'), /config file .*missing\.json does not exist/);
});
