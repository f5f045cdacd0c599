// `finlora finetune` as a user runs it (the built CLI in a child process), on a tiny
// random Llama model directory, a real (byte-level BPE) tokenizer.json and a small
// FinLoRA-style JSONL written by the test: a DoRA run writes a PEFT adapter, metrics and
// a loss curve; a run SIGKILLed mid-training and resumed ends with the same adapter
// bytes as an uninterrupted one; bad input gives one line, exit 1 and no output.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultBackend } from '../../src/backend/registry.js';
import { withSafetensors } from '../../src/io/safetensors.js';
import { sentimentLines, writeTinyModelDir } from '../train/tiny.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-finetune-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

writeTinyModelDir(path.join(root, 'models', 'tiny'));
fs.mkdirSync(path.join(root, 'data', 'train'), { recursive: true });
fs.writeFileSync(path.join(root, 'data', 'train', 'sentiment.jsonl'), `${sentimentLines(48).join('\n')}\n`);
fs.writeFileSync(path.join(root, 'data', 'train', 'empty.jsonl'), '\n');
fs.writeFileSync(path.join(root, 'data', 'train', 'bad.jsonl'), `${sentimentLines(3).join('\n')}\n{"context": "x", "target": 3}\n${sentimentLines(2, 5).join('\n')}\n`);
fs.mkdirSync(path.join(root, 'lora'));

// The runs train on the default device (FINLORA_DEVICE; a run's own default is cpu).
const DEVICE = defaultBackend();
const RUN = {
  base_model: '../models/tiny', dataset_path: '../data/train/sentiment.jsonl', lora_r: 4, learning_rate: 0.01, num_epochs: 2,
  batch_size: 2, gradient_accumulation_steps: 1, peft_use_dora: true, val_set_size: 4, evals_per_epoch: 1, save_steps: 1, seed: 3,
  device: DEVICE.name,
};
const quantMissing = (['quantizeInt8', 'quantizedMatmul'] as const).filter((op) => DEVICE.kernels[op] === undefined);
const CONFIGS = path.join(root, 'lora', 'finetune_configs.json');
fs.writeFileSync(CONFIGS, JSON.stringify({
  tiny_dora: RUN,
  tiny_dora_no_ckpt: { ...RUN, gradient_checkpointing: false },
  tiny_lora_q8: { ...RUN, peft_use_dora: false, quant_bits: 8, num_epochs: 1, lora_alpha: 8 },
  no_data: { ...RUN, dataset_path: '../data/train/missing.jsonl' },
  empty_data: { ...RUN, dataset_path: '../data/train/empty.jsonl' },
  bad_line: { ...RUN, dataset_path: '../data/train/bad.jsonl', num_epochs: 1 },
  r_string: { ...RUN, lora_r: '4' },
  quant_3: { ...RUN, quant_bits: 3 },
  no_model: { ...RUN, base_model: '../models/absent' },
  no_device: { ...RUN, device: 'tpu' },
}, null, 2));

interface Result { status: number | null; stdout: string; stderr: string }

function finlora(args: string[], cwd = root): Result {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '', HF_HUB_OFFLINE: '1' }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('a DoRA run writes a PEFT adapter, metrics.jsonl and a loss curve under lora_adapters/fp16_r4_dora/<run>/', () => {
  const r = finlora(['finetune', 'tiny_dora', '--config-json', CONFIGS]);
  assert.equal(r.status, 0, r.stderr);
  const dir = path.join(root, 'lora_adapters', 'fp16_r4_dora', 'tiny_dora');
  assert.match(r.stdout, /trained 44 steps in .* final loss \d+\.\d+, validation loss \d+\.\d+\nadapter: .*lora_adapters\/fp16_r4_dora\/tiny_dora \(adapter_config\.json, adapter_model\.safetensors, metrics\.jsonl, loss\.svg\)\n$/);
  assert.match(r.stderr, /run tiny_dora: 48 examples from .*sentiment\.jsonl; 44 to train on, 4 for validation/);
  assert.match(r.stderr, /DoRA r 4, alpha 16 on q_proj, k_proj, v_proj: trainable params: 1,408 \|\| all params: 36,512 .*; gradient checkpointing on/);
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  assert.equal(config.peft_type, 'LORA');
  assert.equal(config.use_dora, true);
  assert.equal(config.r, 4);
  assert.equal(config.lora_alpha, 16);
  assert.equal(config.lora_dropout, 0.05);
  assert.deepEqual([...config.target_modules].sort(), ['k_proj', 'q_proj', 'v_proj']);
  withSafetensors(path.join(dir, 'adapter_model.safetensors'), (f) => {
    assert.equal(f.names().length, 2 * 3 * 3);
    assert.deepEqual(f.info('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight').shape, [4, 32]);
    assert.deepEqual(f.info('base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight').shape, [16, 4]);
    assert.deepEqual(f.info('base_model.model.model.layers.1.self_attn.k_proj.lora_magnitude_vector').shape, [16]);
  });
  const records = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(records.filter((x) => x.type === 'train').length, 44);
  assert.ok(records.some((x) => x.type === 'eval'));
  assert.ok(records.some((x) => x.type === 'movement' && x.modules.q_proj.magnitude_change > 0));
  assert.match(fs.readFileSync(path.join(dir, 'loss.svg'), 'utf8'), /<svg[\s\S]*tiny_dora: loss by optimizer step[\s\S]*<\/svg>/);
  // a second run without --resume refuses to touch it
  const again = finlora(['finetune', 'tiny_dora', '--config-json', CONFIGS]);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /^finlora finetune: .*tiny_dora holds checkpoints of an earlier run; pass --resume to continue it, or --overwrite to start over\n$/);
});

test('a run SIGKILLed mid-training and resumed ends with the same adapter bytes as an uninterrupted run', async () => {
  const reference = path.join(root, 'lora_adapters', 'fp16_r4_dora', 'tiny_dora', 'adapter_model.safetensors');
  if (!fs.existsSync(reference)) assert.equal(finlora(['finetune', 'tiny_dora', '--config-json', CONFIGS]).status, 0);
  const out = path.join(root, 'killed');
  const dir = path.join(out, 'fp16_r4_dora', 'tiny_dora');
  const child = spawn(process.execPath, [CLI, 'finetune', 'tiny_dora', '--config-json', CONFIGS, '--output-dir', out], { cwd: root, stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  // wait for the third checkpoint, then kill while the next steps run
  const deadline = Date.now() + 60_000;
  while (!fs.existsSync(path.join(dir, 'checkpoints', 'checkpoint-3')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  child.kill('SIGKILL');
  assert.equal(await exited, 'SIGKILL');
  assert.ok(!fs.existsSync(path.join(dir, 'adapter_model.safetensors')), 'killed before the end');
  const resumed = finlora(['finetune', 'tiny_dora', '--config-json', CONFIGS, '--output-dir', out, '--resume']);
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.match(resumed.stderr, /resuming from .*checkpoint-\d+: step \d+ of 44/);
  assert.match(resumed.stdout, /^resumed at step \d+; trained 44 steps/);
  assert.ok(fs.readFileSync(path.join(dir, 'adapter_model.safetensors')).equals(fs.readFileSync(reference)), 'same adapter bytes');
  const steps = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.type === 'train').map((x) => x.step);
  assert.deepEqual(steps, Array.from({ length: 44 }, (_, i) => i + 1));
});

test('gradient checkpointing changes nothing in the result', () => {
  const reference = path.join(root, 'lora_adapters', 'fp16_r4_dora', 'tiny_dora', 'adapter_model.safetensors');
  if (!fs.existsSync(reference)) assert.equal(finlora(['finetune', 'tiny_dora', '--config-json', CONFIGS]).status, 0);
  const r = finlora(['finetune', 'tiny_dora_no_ckpt', '--config-json', CONFIGS]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!/gradient checkpointing on/.test(r.stderr));
  assert.ok(fs.readFileSync(path.join(root, 'lora_adapters', 'fp16_r4_dora', 'tiny_dora_no_ckpt', 'adapter_model.safetensors')).equals(fs.readFileSync(reference)));
});

test('quant_bits 8 with plain LoRA: the base is quantized and the adapter lands in 8bits_r4/', {
  skip: quantMissing.length > 0 ? `backend '${DEVICE.name}' has no ${quantMissing.join(', ')}` : false,
}, () => {
  const r = finlora(['finetune', 'tiny_lora_q8', '--config-json', CONFIGS]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /quant_bits 8: 14 Linear layers of the base quantized \(int8 rows\)/);
  const config = JSON.parse(fs.readFileSync(path.join(root, 'lora_adapters', '8bits_r4', 'tiny_lora_q8', 'adapter_config.json'), 'utf8'));
  assert.equal(config.use_dora, false);
  assert.equal(config.lora_alpha, 8);
});

test('a malformed line stops the run before training with file:line; --skip-malformed skips and counts it', () => {
  const r = finlora(['finetune', 'bad_line', '--config-json', CONFIGS, '--output-dir', 'out-bad']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^finlora finetune: .*bad\.jsonl:4: "target" must be a string, got a number \(3\) \(fix the line, or skip malformed lines with --skip-malformed\)\n$/);
  assert.ok(!fs.existsSync(path.join(root, 'out-bad')));
  const s = finlora(['finetune', 'bad_line', '--config-json', CONFIGS, '--output-dir', 'out-bad', '--skip-malformed']);
  assert.equal(s.status, 0, s.stderr);
  assert.match(s.stderr, /skipped 1 malformed line\(s\) of .*bad\.jsonl \(first: line 4, "target" must be a string/);
});

test('bad input: one line, exit 1, no output directory', () => {
  fs.writeFileSync(path.join(root, 'lora', 'not_json.json'), '{"x": {"lora_r": 4,}}');
  const cases: [string[], RegExp][] = [
    [['no_data'], /run 'no_data': dataset .*missing\.jsonl does not exist \(dataset_path "\.\.\/data\/train\/missing\.jsonl" resolved against .*lora\); get FinLoRA's data with 'finlora data fetch'/],
    [['empty_data'], /dataset .*empty\.jsonl is empty: it holds no examples/],
    [['x', '--config-json', path.join(root, 'lora', 'not_json.json')], /not_json\.json is not valid JSON: unexpected "\}" \(expected a double-quoted property name\) at line 1, column 20/],
    [['r_string'], /run 'r_string': lora_r must be a number, got "4" \(a string\)/],
    [['quant_3'], /run 'quant_3': quant_bits must be 8 \(int8\) or 4 \(NF4\), or absent for an unquantized base; got 3/],
    [['no_model'], /run 'no_model': base_model ".*models\/absent": model directory .*models\/absent does not exist/],
    [['tiny_droa'], /run 'tiny_droa' is not in .*finetune_configs\.json \(did you mean 'tiny_dora'\?\); runs there: tiny_dora, tiny_dora_no_ckpt, tiny_lora_q8, /],
    [['no_data', '--config-json', path.join(root, 'lora', 'absent.json')], /config file .*absent\.json does not exist/],
    [['no_device'], /run 'no_device': device "tpu" is not available: unknown device 'tpu' \(available: /],
  ];
  for (const [args, pattern] of cases) {
    const out = path.join(root, 'out-none');
    const r = finlora(['finetune', ...args, ...(args.includes('--config-json') ? [] : ['--config-json', CONFIGS]), '--output-dir', out]);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^finlora finetune: /);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!fs.existsSync(out), `${args.join(' ')} left ${out}`);
  }
  const usage = finlora(['finetune']);
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /a run name is required/);
});
