// The embedded default: the model, data and `demo` run finlora ships. The run is valid
// and names shipped files; the model is a loadable Llama of at most 25 MB with its
// tokenizer; a short version of the run (the shipped settings with max_steps 6 and 24
// held-out questions) goes end to end through `finlora finetune`, scoring before and
// after; and `finlora finetune demo` finds the shipped run from any directory.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chooseConfigFile, shippedConfigFile } from '../../src/cli/shipped_configs.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { loadAllRuns, loadRun } from '../../src/train/config.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-demo-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

const shipped = shippedConfigFile();

function finlora(args: string[], cwd: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '', HF_HUB_OFFLINE: '1' }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('the shipped demo run is valid and names the shipped model and data', async () => {
  assert.deepEqual(loadAllRuns(shipped).map((r) => r.name), ['demo']);
  const run = loadRun(shipped, 'demo');
  const demoDir = path.dirname(shipped);
  assert.equal(run.baseModel, path.join(demoDir, 'model'));
  assert.equal(run.datasetFile, path.join(demoDir, 'data', 'train.jsonl'));
  assert.equal(run.evalDatasetFile, path.join(demoDir, 'data', 'test.jsonl'));
  assert.equal(run.useDora, true);
  assert.equal(run.loraR, 8);
  assert.equal(run.quantBits, null);
  const files = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];
  const bytes = files.reduce((n, f) => n + fs.statSync(path.join(run.baseModel, f)).size, 0);
  assert.ok(bytes <= 25e6, `the shipped model takes ${bytes} bytes`);
  const tok = await Tokenizer.fromDir(run.baseModel, { warn: (m) => assert.fail(m) });
  const model = LlamaForCausalLM.fromPretrained(run.baseModel);
  try {
    assert.equal(model.config.vocabSize, tok.vocabSize);
    assert.ok(tok.vocabSize >= 2000 && tok.vocabSize <= 4096, `vocabulary ${tok.vocabSize}`);
  } finally {
    model.dispose();
  }
});

test('a short version of the demo run goes end to end: fine-tune, score before and after', () => {
  const demo = JSON.parse(fs.readFileSync(shipped, 'utf8')).demo as Record<string, unknown>;
  const demoDir = path.dirname(shipped);
  const heldOut = path.join(root, 'held_out.jsonl');
  fs.writeFileSync(heldOut, `${fs.readFileSync(path.join(demoDir, 'data', 'test.jsonl'), 'utf8').trim().split('\n').slice(0, 24).join('\n')}\n`);
  const configs = path.join(root, 'finetune_configs.json');
  fs.writeFileSync(configs, JSON.stringify({
    demo_short: {
      ...demo, base_model: path.join(demoDir, 'model'), dataset_path: path.join(demoDir, 'data', 'train.jsonl'), eval_dataset_path: heldOut, max_steps: 6,
    },
  }));
  const r = finlora(['finetune', 'demo_short', '--config-json', configs], root);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^trained 6 steps in .*\nadapter: .*fp16_r8_dora\/demo_short \(.*held_out_eval\.json\)\nheld-out .*held_out\.jsonl \(24 examples\):\n  before: accuracy \d+\.\d% \(\d+\/24\), weighted F1 \d\.\d{3}\n  after:  accuracy \d+\.\d% \(\d+\/24\), weighted F1 \d\.\d{3}\n$/);
  assert.match(r.stderr, /before training: accuracy/);
  assert.match(r.stderr, /DoRA r 8, alpha 16 on /);
  const result = JSON.parse(fs.readFileSync(path.join(root, 'lora_adapters', 'fp16_r8_dora', 'demo_short', 'held_out_eval.json'), 'utf8'));
  assert.equal(result.before.count, 24);
  assert.equal(result.max_new_tokens, 10);
});

test('finetune falls back to the shipped run when the user config lacks it', () => {
  const dir = fs.mkdtempSync(path.join(root, 'configs-'));
  const fake = path.join(dir, 'shipped.json');
  fs.writeFileSync(fake, JSON.stringify({ demo: {} }));
  const user = path.join(dir, 'user.json');
  fs.writeFileSync(user, JSON.stringify({ mine: {} }));
  const notes: string[] = [];
  const note = (l: string) => notes.push(l);
  assert.equal(chooseConfigFile('mine', user, note, fake), user);
  assert.equal(chooseConfigFile('demo', user, note, fake), fake);
  assert.match(notes[0], /run 'demo' is not in .*user\.json; using the run finlora ships in .*shipped\.json/);
  // Neither defines it: the user's file, whose error lists its runs.
  assert.equal(chooseConfigFile('other', user, note, fake), user);
  // No user file named and none in the working directory.
  const cwd = process.cwd();
  process.chdir(dir);
  try {
    assert.equal(chooseConfigFile('other', undefined, note, fake), null);
    assert.equal(chooseConfigFile('demo', undefined, note, fake), fake);
  } finally {
    process.chdir(cwd);
  }
  const empty = fs.mkdtempSync(path.join(root, 'empty-'));
  const r = finlora(['finetune', 'nosuch'], empty);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^finlora finetune: no finetune_configs\.json in .*; pass --config-json FILE \(runs finlora ships: demo\)\n$/);
});

test('`finlora finetune demo` from a directory without configs starts the shipped run', async () => {
  const cwd = fs.mkdtempSync(path.join(root, 'user-'));
  const child = spawn(process.execPath, [CLI, 'finetune', 'demo'], { cwd, env: { ...process.env, FINLORA_DEBUG: '' } });
  let stderr = '';
  const started = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 60_000);
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      // Once the shipped run's data is read it is the shipped run that trains; stop it there.
      if (/run demo: 1500 examples/.test(stderr)) {
        clearTimeout(timer);
        resolve(true);
      }
    });
    child.on('exit', () => resolve(false));
  });
  child.kill('SIGKILL');
  assert.ok(started, stderr);
  assert.match(stderr, /run 'demo' is not in .*finetune_configs\.json \(no such file\); using the run finlora ships in .*demo\/finetune_configs\.json/);
});
