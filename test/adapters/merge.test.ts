// `finlora merge` and `finlora forward --adapter [--merge]` as users run them (the built
// CLI in a child process) on the PEFT fixtures: the merged directory is complete
// (config, shards with an index, tokenizer files), loads, and holds PEFT's merged
// weights; the reported logit difference is the real one; bad input leaves nothing.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { noGrad } from '../../src/autograd/tape.js';
import { withSafetensors } from '../../src/io/safetensors.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { tensor } from '../../src/ops/creation.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, values } from '../helpers.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const ADAPTERS = fileURLToPath(new URL('../../../test/fixtures/adapters/', import.meta.url));
const MODELS = fileURLToPath(new URL('../../../test/fixtures/models/', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-merge-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function finlora(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '' }, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function reference(name: string) {
  return withSafetensors(path.join(ADAPTERS, name, 'reference.safetensors'), (f) => {
    const ids = Array.from(f.read('input_ids'));
    const merged = new Map(f.names().filter((n) => n.startsWith('merged.')).map((n) => [n.slice('merged.'.length), Float32Array.from(f.read(n))]));
    return { ids: [ids.slice(0, 8), ids.slice(8, 16)], logits: f.read('logits'), mergedLogits: f.read('merged_logits'), merged };
  });
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** The base model with tokenizer files beside it, as a real model directory has. */
const BASE = path.join(tmp, 'base');
fs.cpSync(path.join(MODELS, 'llama3_gqa'), BASE, { recursive: true });
fs.rmSync(path.join(BASE, 'reference.safetensors'));
fs.writeFileSync(path.join(BASE, 'tokenizer.json'), '{"version": "1.0", "model": {"type": "BPE"}}');
fs.writeFileSync(path.join(BASE, 'tokenizer_config.json'), '{"model_max_length": 512}');

test('finlora merge writes a complete model directory holding PEFT merge_and_unload weights', () => {
  const ref = reference('dora_qkv');
  const out = path.join(tmp, 'merged');
  const r = finlora('merge', '--model', BASE, '--adapter', path.join(ADAPTERS, 'dora_qkv', 'adapter'), '--out', out, '--max-shard-size', '150KB');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^merged DoRA adapter \(6 layers\) into .*merged: 3 shards, 0\.38 MB of f32 weights\n/);
  const m = /largest logit difference, merged vs unmerged, on a 16-token probe: (\S+) \(the adapter itself moves logits by up to (\S+)\)/.exec(r.stdout);
  assert.ok(m !== null, r.stdout);
  assert.ok(Number(m[1]) < 1e-4, `merge error ${m[1]}`);
  assert.ok(Number(m[2]) > 1e-2, `the adapter has an effect (${m[2]})`);
  assert.deepEqual(fs.readdirSync(out).sort(), [
    'config.json', 'model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors',
    'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json',
  ]);
  assert.equal(fs.readFileSync(path.join(out, 'config.json'), 'utf8'), fs.readFileSync(path.join(BASE, 'config.json'), 'utf8'));
  assert.equal(fs.readFileSync(path.join(out, 'tokenizer.json'), 'utf8'), fs.readFileSync(path.join(BASE, 'tokenizer.json'), 'utf8'));
  const index = JSON.parse(fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
  assert.equal(Object.keys(index.weight_map).length, 21);
  assert.ok(!Object.keys(index.weight_map).some((k) => k.includes('lora')), 'no adapter tensors in the merged model');
  withSafetensors(path.join(out, 'model-00001-of-00003.safetensors'), (f) => assert.deepEqual(f.metadata, { format: 'pt' }));
  for (const [name, want] of ref.merged) {
    const shard = index.weight_map[name];
    const got = withSafetensors(path.join(out, shard), (f) => f.read(name));
    assertClose(got, want, { atol: 1e-5 * maxAbs(want), rtol: 1e-5 }, name);
  }
  const model = LlamaForCausalLM.fromPretrained(out);
  try {
    const logits = noGrad(() => scope(() => values(model.forward(tensor(ref.ids.flat(), [2, 8], { dtype: 'int32', device: model.backend })))));
    assertClose(logits, ref.mergedLogits, { atol: 1e-5 * maxAbs(ref.mergedLogits), rtol: 1e-5 }, 'merged model logits');
  } finally {
    model.dispose();
  }
  assert.deepEqual(fs.readdirSync(tmp).filter((n) => n.startsWith('.')), [], 'no temporary directory left');
});

test('finlora merge --dtype bf16 rounds the weights and says so in config.json and the logit difference', () => {
  const out = path.join(tmp, 'merged-bf16');
  const r = finlora('merge', '--model', BASE, '--adapter', path.join(ADAPTERS, 'lora_plain', 'adapter'), '--out', out, '--dtype', 'bf16', '--probe-ids', '[[5, 17, 200, 31, 9, 77]]');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /merged LoRA adapter \(8 layers\) into .*: 1 shard, 0\.19 MB of bf16 weights/);
  const diff = Number(/probe: (\S+)/.exec(r.stdout)?.[1]);
  assert.ok(diff > 1e-4 && diff < 1, `bf16 rounding shows in the difference (${diff})`);
  assert.match(r.stdout, /on a 6-token probe/);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(cfg.dtype, 'bfloat16');
  withSafetensors(path.join(out, 'model-00001-of-00001.safetensors'), (f) => assert.equal(f.info('model.layers.0.self_attn.q_proj.weight').format, 'BF16'));
});

test('finlora forward --adapter gives PEFT logits; with --merge the merged model logits', () => {
  for (const name of ['dora_qkv', 'dora_qkv_bias']) {
    const ref = reference(name);
    const base = name === 'dora_qkv' ? BASE : path.join(MODELS, 'qwen2_bias_tied');
    for (const merge of [false, true]) {
      const out = path.join(tmp, `${name}-${merge}.safetensors`);
      const r = finlora('forward', '--model', base, '--adapter', path.join(ADAPTERS, name, 'adapter'), '--input-ids', JSON.stringify(ref.ids), '--out', out, ...(merge ? ['--merge'] : []));
      assert.equal(r.status, 0, r.stderr);
      const want = merge ? ref.mergedLogits : ref.logits;
      withSafetensors(out, (f) => assertClose(f.read('logits'), want, { atol: 1e-5 * maxAbs(want), rtol: 1e-5 }, `${name} merge=${merge}`));
    }
  }
});

test('bad input: one line naming the problem, exit 1 or 2, nothing written', () => {
  const occupied = path.join(tmp, 'occupied');
  fs.mkdirSync(occupied);
  fs.writeFileSync(path.join(occupied, 'keep.txt'), 'mine');
  const broken = path.join(tmp, 'broken-adapter');
  fs.cpSync(path.join(ADAPTERS, 'dora_qkv', 'adapter'), broken, { recursive: true });
  fs.writeFileSync(path.join(broken, 'adapter_config.json'), '{"peft_type": "PREFIX_TUNING"}');
  const cases: [string[], number, RegExp, string | null][] = [
    [['merge', '--model', BASE, '--adapter', path.join(ADAPTERS, 'dora_qkv', 'adapter')], 2, /^finlora merge: --out DIR is required\n$/, null],
    [['merge', '--model', BASE, '--adapter', path.join(ADAPTERS, 'dora_qkv', 'adapter'), '--out', occupied], 1, /occupied: already exists and is not an empty directory/, null],
    [['merge', '--model', BASE, '--adapter', broken, '--out', path.join(tmp, 'never1')], 1, /broken-adapter\/adapter_config\.json: peft_type "PREFIX_TUNING" is not supported/, path.join(tmp, 'never1')],
    [['merge', '--model', BASE, '--adapter', path.join(tmp, 'missing'), '--out', path.join(tmp, 'never2')], 1, /missing: no such directory \(--adapter\)/, path.join(tmp, 'never2')],
    [['merge', '--model', BASE, '--adapter', path.join(ADAPTERS, 'dora_qkv', 'adapter'), '--out', path.join(tmp, 'never3'), '--dtype', 'f64'], 2, /--dtype must be auto, f32, bf16 or f16/, path.join(tmp, 'never3')],
    [['merge', '--model', BASE, '--adapter', path.join(ADAPTERS, 'dora_all_rslora', 'adapter'), '--out', path.join(tmp, 'never4'), '--probe-ids', '[[1, 999]]'], 1, /probe id 999 is outside the vocabulary of 256/, path.join(tmp, 'never4')],
    [['merge', '--model', BASE, '--adapter', path.join(ADAPTERS, 'dora_qkv', 'adapter'), '--out', path.join(tmp, 'never5'), '--device', 'tpu'], 1, /^finlora merge: device 'tpu' \(--device\) is not available: unknown device 'tpu'/, path.join(tmp, 'never5')],
    [['forward', '--model', BASE, '--input-ids', '[[1, 2]]', '--out', path.join(tmp, 'x.safetensors'), '--merge'], 2, /--merge needs --adapter DIR/, path.join(tmp, 'x.safetensors')],
    [['forward', '--model', BASE, '--input-ids', '[[1, 2]]', '--out', path.join(tmp, 'y.safetensors'), '--adapter', broken], 1, /adapter_config\.json: peft_type "PREFIX_TUNING"/, path.join(tmp, 'y.safetensors')],
  ];
  for (const [args, status, re, never] of cases) {
    const r = finlora(...args);
    assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    if (never !== null) assert.equal(fs.existsSync(never), false, `${never} must not exist`);
  }
  assert.deepEqual(fs.readdirSync(occupied), ['keep.txt']);
  assert.deepEqual(fs.readdirSync(tmp).filter((n) => n.startsWith('.')), [], 'no temporary directory left');
});
