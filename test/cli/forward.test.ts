// `finlora forward` run as a user runs it (the built CLI in a child process) on a
// transformers fixture: the logits and the --labels loss it writes match what
// transformers computed; bad input gives one line on stderr, a non-zero exit and no file.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { withSafetensors } from '../../src/io/safetensors.js';
import { assertClose } from '../helpers.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const MODEL = fileURLToPath(new URL('../../../test/fixtures/models/llama3_gqa', import.meta.url));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-forward-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function finlora(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '' }, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const ref = withSafetensors(path.join(MODEL, 'reference.safetensors'), (f) => ({
  ids: f.read('input_ids'),
  logits: f.read('logits'),
  loss: f.read('loss')[0],
}));
const IDS = JSON.stringify([Array.from(ref.ids.slice(0, 8)), Array.from(ref.ids.slice(8, 16))]);

test('writes transformers-matching logits and, with --labels, the shifted mean loss', () => {
  const out = path.join(dir, 'out.safetensors');
  const r = finlora('forward', '--model', MODEL, '--input-ids', IDS, '--labels', '--out', out);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^wrote logits \[2, 8, 256\] and loss \d+\.\d{6} to /);
  withSafetensors(out, (f) => {
    assert.deepEqual(f.names(), ['logits', 'loss']);
    assert.equal(f.info('logits').format, 'F32');
    assert.deepEqual(f.info('logits').shape, [2, 8, 256]);
    assert.deepEqual(f.info('loss').shape, []);
    assertClose(f.read('logits'), ref.logits, { atol: 1e-4, rtol: 0 }, 'logits');
    assertClose(f.read('loss'), [ref.loss], { atol: 1e-5, rtol: 0 }, 'loss');
  });
});

test('--device cpu: the same transformers-matching logits on the cpu, whatever the default device', () => {
  const out = path.join(dir, 'cpu.safetensors');
  const r = finlora('forward', '--model', MODEL, '--input-ids', IDS, '--device', 'cpu', '--out', out);
  assert.equal(r.status, 0, r.stderr);
  withSafetensors(out, (f) => assertClose(f.read('logits'), ref.logits, { atol: 1e-4, rtol: 0 }, 'logits'));
});

test('without --labels only logits are written; --dtype bf16 stays close', () => {
  const out = path.join(dir, 'bf16.safetensors');
  const r = finlora('forward', '--model', MODEL, '--input-ids', IDS, '--dtype', 'bf16', '--out', out);
  assert.equal(r.status, 0, r.stderr);
  withSafetensors(out, (f) => {
    assert.deepEqual(f.names(), ['logits']);
    // f32 in the file even where the bf16 model computes in bf16 (cuda)
    assert.equal(f.info('logits').format, 'F32');
    assertClose(f.read('logits'), ref.logits, { atol: 0.1, rtol: 0 }, 'bf16 logits');
  });
});

test('bad input: one line naming the problem, the right exit code, no output file', () => {
  const out = path.join(dir, 'never.safetensors');
  const cases: [string[], number, RegExp][] = [
    [['--input-ids', '[[1, 2, 3], [4, 5]]'], 2, /row 1 has 2 ids, row 0 has 3; rows must have the same length/],
    [['--input-ids', '[[1, -2]]'], 2, /row 0, position 1 is -2, not a token id/],
    [['--input-ids', '[1, 2]'], 2, /must be a JSON array of rows/],
    [['--input-ids', '[[1, 2'], 2, /--input-ids is not valid JSON/],
    [['--input-ids', '[[1, 999]]'], 1, /row 0, position 1 is 999, outside the vocabulary of 256/],
    [['--input-ids', '[[1]]', '--labels'], 2, /--labels needs at least 2 ids per row/],
    [['--input-ids', '[[1, 2]]', '--dtype', 'f16'], 2, /--dtype must be f32 or bf16/],
    [['--input-ids', '[[1, 2]]', '--device', 'tpu'], 1, /device 'tpu' \(--device\) is not available: unknown device 'tpu'/],
  ];
  for (const [args, status, pattern] of cases) {
    const r = finlora('forward', '--model', MODEL, '--out', out, ...args);
    assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^finlora forward: /);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!fs.existsSync(out));
  }
  const missing = finlora('forward', '--model', path.join(dir, 'nope'), '--input-ids', '[[1, 2]]', '--out', out);
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /^finlora forward: .*nope: no such directory\n$/);
  const noWeights = path.join(dir, 'no-weights');
  fs.mkdirSync(noWeights);
  fs.copyFileSync(path.join(MODEL, 'config.json'), path.join(noWeights, 'config.json'));
  const r = finlora('forward', '--model', noWeights, '--input-ids', '[[1, 2]]', '--out', out);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^finlora forward: .*no-weights: no model\.safetensors or model\.safetensors\.index\.json\n$/);
  assert.ok(!fs.existsSync(out));
});
